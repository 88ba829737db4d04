// Package lease hands out exclusive, expiring leases on names, so that
// several backup agents writing into one shared repository never write
// restore points of one source at once, and a prune never runs while
// another agent writes.
//
// A lease is held from Acquire until Release and renewed every third of its
// ttl meanwhile. A holder that dies stops renewing; its lease expires after
// ttl and another agent can take it then (AcquireWait). Local serves one
// agent (in-process); Redis serves several agents sharing a Redis server.
//
// What a lease guarantees: taking a name is atomic, so the store never has
// two live leases on one name; renewal and release compare the lease's own
// token, so a holder never extends or deletes a lease that is no longer its
// own (not even one its own manager took later); a renewal that finds the
// lease gone (deleted, expired, or Redis restarted without its data) reports
// it lost and never re-creates it, since another agent may have taken it
// meanwhile. When renewals fail (Redis unreachable), the holder considers the
// lease lost once the ttl since its last successful renewal has passed, on
// its local monotonic clock, before the store can hand it to anyone else.
//
// What it does not guarantee:
//   - Redis is one instance: no replication, no Redlock. When Redis restarts
//     and loses its keys, another agent can take the name before the old
//     holder's next renewal (at most ttl/3 later) tells it that it lost it:
//     for that moment the name has two holders.
//   - A process paused (GC, SIGSTOP, a frozen VM) for longer than what is
//     left of its lease can wake up and write after its lease expired and
//     was taken, before it notices. Callers call Check right before
//     committing, which narrows that window to the time between Check and
//     the commit but does not close it: that would need fencing tokens
//     checked by the storage.
//   - Expiry in Redis runs on the server's clock and the holder's deadline
//     on its own: the two must run at the same rate (they need not agree on
//     the time).
package lease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Manager hands out exclusive, expiring leases on names.
type Manager interface {
	// Acquire takes the lease on name for ttl if no one holds it, and keeps it
	// renewed (every ttl/3) until Release. When someone else holds it, it
	// returns an error wrapping ErrHeld that says who holds it and for how much longer.
	Acquire(ctx context.Context, name string, ttl time.Duration) (*Lease, error)
	// Held lists the live leases whose names start with prefix.
	Held(ctx context.Context, prefix string) ([]Info, error)
}

// Info describes a live lease.
type Info struct {
	Name, Owner string
	// Remaining is how long the lease lasts unless renewed; negative for a
	// Redis key without expiry (not written by this package).
	Remaining time.Duration
}

var (
	// ErrHeld: the lease is held by another owner (a *HeldError says who).
	ErrHeld = errors.New("lease held by another owner")
	// ErrLost: the lease is no longer held (lost or released).
	ErrLost = errors.New("lease lost")
)

// HeldError is Acquire's error when the lease is held: it wraps ErrHeld.
type HeldError struct{ Info }

func (e *HeldError) Error() string {
	if e.Remaining < 0 {
		return fmt.Sprintf("lease %q held by %s with no expiry", e.Name, e.Owner)
	}
	return fmt.Sprintf("lease %q held by %s for another %s", e.Name, e.Owner, e.Remaining.Round(time.Millisecond))
}

func (e *HeldError) Unwrap() error { return ErrHeld }

// MinTTL is the shortest ttl Acquire accepts: renewals every ttl/3 must
// have time to reach the store.
const MinTTL = 30 * time.Millisecond

func checkTTL(name string, ttl time.Duration) error {
	if ttl < MinTTL {
		return fmt.Errorf("lease %q: ttl %s is below the minimum %s", name, ttl, MinTTL)
	}
	return nil
}

// AcquireWait acquires the lease on name, retrying every poll (±25 %, so
// that waiting agents do not retry in step) while another owner holds it,
// until ctx is done: for a job that must wait for a dead agent's lease to
// expire. Errors other than ErrHeld are returned at once.
func AcquireWait(ctx context.Context, m Manager, name string, ttl, poll time.Duration) (*Lease, error) {
	if poll <= 0 {
		poll = time.Second
	}
	for {
		l, err := m.Acquire(ctx, name, ttl)
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, ErrHeld) {
			return nil, err
		}
		wait := poll*3/4 + mrand.N(poll/2+1)
		// A lease that expires sooner (its holder dead) is retried then.
		var he *HeldError
		if errors.As(err, &he) && he.Remaining >= 0 && he.Remaining < wait {
			wait = he.Remaining + time.Millisecond
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("gave up waiting: %v: %w", err, ctx.Err())
		case <-t.C:
		}
	}
}

// newOwner makes the owner string of a manager: the given name (host and
// process id if empty) and a random suffix, so that two managers given the
// same name are still different owners.
func newOwner(given string) string {
	if given == "" {
		host, _ := os.Hostname()
		given = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	var b [4]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return given + "-" + hex.EncodeToString(b[:])
}

// tokens numbers the leases of one owner. Each lease has its own token (the
// owner, '#', a number): comparing the owner alone would let a lost lease
// renew or delete the lease its own manager took on the same name later.
type tokens struct {
	owner string
	seq   atomic.Uint64
}

func (t *tokens) next() string { return t.owner + "#" + strconv.FormatUint(t.seq.Add(1), 10) }

// ownerOf is the owner part of a token.
func ownerOf(token string) string {
	if i := strings.LastIndexByte(token, '#'); i >= 0 {
		return token[:i]
	}
	return token
}

// backend is what a Lease needs of its store.
type backend interface {
	// renew extends l by its ttl if the store still holds l's token. An
	// error of type notHeld means the lease is gone or another's; other
	// errors are retried at the next period.
	renew(ctx context.Context, l *Lease) error
	// release deletes l if the store still holds l's token.
	release(ctx context.Context, l *Lease) error
}

// notHeld is a renewal's finding that the lease is no longer l's.
type notHeld struct{ reason string }

func (e notHeld) Error() string { return e.reason }

// renewers counts running renewal goroutines, for the tests' leak checks.
var renewers atomic.Int64

// Lease is a held lease. Its methods are safe for concurrent use.
type Lease struct {
	name, owner, token string
	ttl                time.Duration
	b                  backend
	log                *zap.Logger
	now                func() time.Time // the clock of the deadline: monotonic for Redis

	lost   chan struct{}
	cancel context.CancelFunc // stops renewal
	done   chan struct{}      // closed when the renewal goroutine has returned

	mu       sync.Mutex
	deadline time.Time   // the lease is surely ours until then
	expiry   *time.Timer // fires at deadline
	lastErr  error       // of the last failed renewal
	lostErr  error       // non-nil once lost
	stopped  bool        // released or abandoned: nothing more to report

	relMu   sync.Mutex // serialises Release
	deleted bool       // released from the store (or abandoned: not ours to delete)
}

// newLease starts renewing a lease acquired with a request sent at start.
func newLease(name, token string, ttl time.Duration, start time.Time, b backend, log *zap.Logger, now func() time.Time) *Lease {
	ctx, cancel := context.WithCancel(context.Background())
	l := &Lease{name: name, owner: ownerOf(token), token: token, ttl: ttl, b: b, now: now,
		log:  log.With(zap.String("lease", name), zap.String("owner", ownerOf(token))),
		lost: make(chan struct{}), cancel: cancel, done: make(chan struct{}),
		deadline: start.Add(ttl)}
	// The timer reports the loss at the deadline even while a renewal hangs.
	l.expiry = time.AfterFunc(l.deadline.Sub(now()), l.expire)
	go l.renewLoop(ctx)
	return l
}

// Name is the lease's name.
func (l *Lease) Name() string { return l.name }

// Owner is the holder's owner string, as Held and HeldError report it.
func (l *Lease) Owner() string { return l.owner }

// Lost is closed once the lease is lost: a renewal found another owner or
// no lease, or renewals failed until the lease's deadline passed. It is not
// closed by Release.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Check returns nil while the lease is held, and an error wrapping ErrLost
// once it is lost or released. Call it just before committing.
func (l *Lease) Check() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lostErr != nil {
		return l.lostErr
	}
	if l.stopped {
		return fmt.Errorf("lease %q: released: %w", l.name, ErrLost)
	}
	// Exact at the deadline, whether or not the renewal goroutine ran.
	if !l.now().Before(l.deadline) {
		l.loseLocked(l.expiredReason())
		return l.lostErr
	}
	return nil
}

// Release stops renewal and deletes the lease if it is still this one's.
// It is idempotent; after an error (store unreachable) it may be called
// again, and otherwise the lease expires after its ttl.
func (l *Lease) Release(ctx context.Context) error {
	l.relMu.Lock()
	defer l.relMu.Unlock()
	l.stop()
	if l.deleted {
		return nil
	}
	if err := l.b.release(ctx, l); err != nil {
		return fmt.Errorf("release lease %q: %w", l.name, err)
	}
	l.deleted = true
	return nil
}

// abandon stops renewal without deleting the lease, as if the holder were
// killed: a test hook.
func (l *Lease) abandon() {
	l.relMu.Lock()
	defer l.relMu.Unlock()
	l.deleted = true
	l.stop()
}

// stop ends renewal and waits for the goroutine.
func (l *Lease) stop() {
	l.mu.Lock()
	l.stopped = true
	l.expiry.Stop()
	l.mu.Unlock()
	l.cancel()
	<-l.done
}

func (l *Lease) renewLoop(ctx context.Context) {
	defer close(l.done)
	renewers.Add(1)
	defer renewers.Add(-1)
	period := l.ttl / 3
	tick := time.NewTicker(period)
	defer tick.Stop()
	var failingSince time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		start := l.now()
		rctx, cancel := context.WithTimeout(ctx, period)
		err := l.b.renew(rctx, l)
		cancel()
		if ctx.Err() != nil {
			return // released or lost meanwhile: the answer no longer matters
		}
		var nh notHeld
		switch {
		case err == nil:
			l.renewed(start)
			if !failingSince.IsZero() {
				l.log.Info("lease renewal recovered", zap.Duration("failed_for", l.now().Sub(failingSince)))
				failingSince = time.Time{}
			}
		case errors.As(err, &nh):
			l.lose(nh.reason)
			return
		default:
			l.mu.Lock()
			l.lastErr = err
			l.mu.Unlock()
			if failingSince.IsZero() {
				failingSince = start
				l.log.Warn("lease renewal failing; retrying", zap.Duration("ttl", l.ttl), zap.Error(err))
			}
		}
	}
}

// renewed moves the deadline after a renewal sent at start.
func (l *Lease) renewed(start time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lostErr != nil || l.stopped {
		return
	}
	l.deadline = start.Add(l.ttl)
	l.lastErr = nil
	l.expiry.Reset(l.deadline.Sub(l.now()))
}

// expire is the deadline timer's function.
func (l *Lease) expire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.now().Before(l.deadline) {
		return // a renewal moved the deadline as the timer fired
	}
	l.loseLocked(l.expiredReason())
}

func (l *Lease) expiredReason() string {
	r := "not renewed within its ttl of " + l.ttl.String()
	if l.lastErr != nil {
		r += " (" + l.lastErr.Error() + ")"
	}
	return r
}

func (l *Lease) lose(reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.loseLocked(reason)
}

func (l *Lease) loseLocked(reason string) {
	if l.lostErr != nil || l.stopped {
		return
	}
	l.lostErr = fmt.Errorf("lease %q: %s: %w", l.name, reason, ErrLost)
	close(l.lost)
	l.expiry.Stop()
	l.cancel()
	l.log.Error("lease lost", zap.String("reason", reason))
}
