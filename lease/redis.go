package lease

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Redis keeps leases in a Redis server shared by several agents: a lease is
// the key prefix+name, its value the lease's token (owner#n) and its expiry
// the lease's.
type Redis struct {
	c      redis.UniversalClient
	prefix string
	tokens *tokens
	log    *zap.Logger
}

var _ Manager = (*Redis)(nil)

// NewRedis returns a manager of leases in client's database, under keys
// starting with keyPrefix ("backup-proxy:lease:" if empty). owner names the
// holder for humans ("agent-host-1234"; host and pid if empty); a random
// suffix is added. The client's timeouts should be well under a third of
// the shortest ttl, so that a hung call does not eat a renewal period, and
// Release waits for a renewal in flight.
func NewRedis(client redis.UniversalClient, keyPrefix, owner string, log *zap.Logger) *Redis {
	if keyPrefix == "" {
		keyPrefix = "backup-proxy:lease:"
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &Redis{c: client, prefix: keyPrefix, tokens: &tokens{owner: newOwner(owner)}, log: log.Named("lease")}
}

// acquireScript is SET NX PX, answering 1, or who holds the key and its
// PTTL in the same step (a separate GET could find it expired meanwhile).
var acquireScript = redis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
`)

// renewScript extends the key if it holds our token: 1; 0 if there is no
// key; else the value found. A missing key is never re-created: another
// agent may have taken the lease since.
var renewScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then
  return 0
end
if v ~= ARGV[1] then
  return v
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

// releaseScript deletes the key if it holds our token.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// Acquire implements Manager. The lease outlives ctx, which bounds the
// acquisition only. If ctx ends while the SET is in flight, the key may
// have been set all the same: it then expires after ttl.
func (r *Redis) Acquire(ctx context.Context, name string, ttl time.Duration) (*Lease, error) {
	if err := checkTTL(name, ttl); err != nil {
		return nil, err
	}
	ttl = ttl.Truncate(time.Millisecond) // what PX stores
	token := r.tokens.next()
	start := time.Now()
	res, err := acquireScript.Run(ctx, r.c, []string{r.prefix + name}, token, ttl.Milliseconds()).Result()
	if err != nil {
		return nil, fmt.Errorf("acquire lease %q: %w", name, err)
	}
	if n, ok := res.(int64); ok && n == 1 {
		return newLease(name, token, ttl, start, r, r.log, time.Now), nil
	}
	if v, ok := res.([]any); ok && len(v) == 2 {
		holder, _ := v[0].(string)
		ms, _ := v[1].(int64)
		return nil, &HeldError{Info{Name: name, Owner: ownerOf(holder), Remaining: remaining(ms)}}
	}
	return nil, fmt.Errorf("acquire lease %q: unexpected answer %v", name, res)
}

// remaining converts a PTTL; a key without expiry (-1) stays negative.
func remaining(ms int64) time.Duration {
	if ms < 0 {
		return -1
	}
	return time.Duration(ms) * time.Millisecond
}

func (r *Redis) renew(ctx context.Context, l *Lease) error {
	res, err := renewScript.Run(ctx, r.c, []string{r.prefix + l.name}, l.token, l.ttl.Milliseconds()).Result()
	if err != nil {
		return err
	}
	switch v := res.(type) {
	case int64:
		if v == 1 {
			return nil
		}
		return notHeld{"gone (expired, deleted, or Redis lost its data)"}
	case string:
		return notHeld{"taken by " + ownerOf(v)}
	}
	return fmt.Errorf("unexpected answer %v", res)
}

func (r *Redis) release(ctx context.Context, l *Lease) error {
	return releaseScript.Run(ctx, r.c, []string{r.prefix + l.name}, l.token).Err()
}

// Held implements Manager. It scans the keys, so it is meant for reports
// and rare checks (before a prune), not for hot paths. Leases are few, so
// one pipeline reads them all.
func (r *Redis) Held(ctx context.Context, prefix string) ([]Info, error) {
	seen := make(map[string]bool)
	var keys []string
	iter := r.c.Scan(ctx, 0, globEscape(r.prefix+prefix)+"*", 100).Iterator()
	for iter.Next(ctx) {
		if k := iter.Val(); !seen[k] { // SCAN may return a key twice
			seen[k] = true
			keys = append(keys, k)
		}
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	if len(keys) == 0 {
		return nil, nil
	}
	gets := make([]*redis.StringCmd, len(keys))
	pttls := make([]*redis.Cmd, len(keys))
	_, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			gets[i] = p.Get(ctx, k)
			pttls[i] = p.Do(ctx, "PTTL", k) // raw milliseconds: -1, -2 as such
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	var out []Info
	for i, k := range keys {
		v, err := gets[i].Result()
		if errors.Is(err, redis.Nil) {
			continue // expired or released since the scan
		}
		if err != nil {
			return nil, fmt.Errorf("list leases: %s: %w", k, err)
		}
		ms, err := pttls[i].Int64()
		if err != nil {
			return nil, fmt.Errorf("list leases: %s: %w", k, err)
		}
		if ms == -2 {
			continue
		}
		out = append(out, Info{Name: strings.TrimPrefix(k, r.prefix), Owner: ownerOf(v), Remaining: remaining(ms)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// globEscape quotes the characters special in a SCAN MATCH pattern.
func globEscape(s string) string {
	var b strings.Builder
	for _, c := range s {
		if strings.ContainsRune(`*?[]\`, c) {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}
