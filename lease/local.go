package lease

import (
	"context"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Local keeps leases in memory, for a single agent (the default): jobs of
// one process exclude each other, other processes are not seen.
type Local struct {
	t      *localTable
	tokens *tokens
}

var _ Manager = (*Local)(nil)

type localTable struct {
	clock func() time.Time
	mu    sync.Mutex
	m     map[string]localEntry
}

type localEntry struct {
	token   string
	expires time.Time
}

// NewLocal returns an in-process manager. Leases expire on clock
// (time.Now if nil); owner names the holder as in NewRedis.
func NewLocal(owner string, clock func() time.Time) *Local {
	if clock == nil {
		clock = time.Now
	}
	return &Local{t: &localTable{clock: clock, m: make(map[string]localEntry)}, tokens: &tokens{owner: newOwner(owner)}}
}

// Acquire implements Manager.
func (m *Local) Acquire(ctx context.Context, name string, ttl time.Duration) (*Lease, error) {
	if err := checkTTL(name, ttl); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	token := m.tokens.next()
	t := m.t
	t.mu.Lock()
	now := t.clock()
	if e, ok := t.m[name]; ok && now.Before(e.expires) {
		t.mu.Unlock()
		return nil, &HeldError{Info{Name: name, Owner: ownerOf(e.token), Remaining: e.expires.Sub(now)}}
	}
	t.m[name] = localEntry{token: token, expires: now.Add(ttl)}
	t.mu.Unlock()
	return newLease(name, token, ttl, now, t, zap.NewNop(), t.clock), nil
}

// Held implements Manager.
func (m *Local) Held(ctx context.Context, prefix string) ([]Info, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t := m.t
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.clock()
	var out []Info
	for name, e := range t.m {
		if !now.Before(e.expires) {
			delete(t.m, name) // expired: its holder stopped renewing
			continue
		}
		if strings.HasPrefix(name, prefix) {
			out = append(out, Info{Name: name, Owner: ownerOf(e.token), Remaining: e.expires.Sub(now)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (t *localTable) renew(_ context.Context, l *Lease) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.clock()
	e, ok := t.m[l.name]
	if !ok || !now.Before(e.expires) {
		return notHeld{"gone (expired or deleted)"}
	}
	if e.token != l.token {
		return notHeld{"taken by " + ownerOf(e.token)}
	}
	e.expires = now.Add(l.ttl)
	t.m[l.name] = e
	return nil
}

func (t *localTable) release(_ context.Context, l *Lease) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.m[l.name]; ok && e.token == l.token {
		delete(t.m, l.name)
	}
	return nil
}
