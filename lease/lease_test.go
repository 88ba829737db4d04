package lease

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/backup-proxy/backup-proxy/internal/redisserver"
)

func TestMain(m *testing.M) {
	// go-redis prints reconnection attempts on stderr; the outage tests make many.
	redis.SetLogger(quiet{})
	os.Exit(m.Run())
}

type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

// testClock is the real clock moved forward by advance, or a fixed time
// moved only by advance.
type testClock struct {
	mu    sync.Mutex
	fixed time.Time
	off   time.Duration
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fixed.IsZero() {
		return time.Now().Add(c.off)
	}
	return c.fixed.Add(c.off)
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

// env is one implementation under the conformance tests: managers sharing
// one store, as agents share a Redis.
type env struct {
	newManager func(owner string) Manager
	// advance lets d pass on the store's clock; nil where only real time
	// passes.
	advance func(d time.Duration)
	// steal deletes the lease on name behind its holder's back.
	steal func(name string)
}

func localEnv(t *testing.T) *env {
	c := &testClock{}
	table := NewLocal("", c.now).t
	return &env{
		newManager: func(owner string) Manager { return &Local{t: table, tokens: &tokens{owner: newOwner(owner)}} },
		advance:    c.advance,
		steal: func(name string) {
			table.mu.Lock()
			delete(table.m, name)
			table.mu.Unlock()
		},
	}
}

// testClient is a client with timeouts short against the tests' ttls, and
// no retries: each renewal period makes one attempt.
func testClient(t *testing.T, srv *redisserver.Server) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = 250*time.Millisecond, 250*time.Millisecond, 250*time.Millisecond
	opt.MaxRetries = -1 // none (0 would mean the default, 3)
	c := redis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c
}

const testPrefix = "test:lease:"

func redisEnv(t *testing.T) *env {
	srv := redisserver.ForTest(t)
	admin := testClient(t, srv)
	log := zaptest.NewLogger(t)
	return &env{
		newManager: func(owner string) Manager { return NewRedis(testClient(t, srv), testPrefix, owner, log) },
		steal: func(name string) {
			if err := admin.Del(context.Background(), testPrefix+name).Err(); err != nil {
				t.Fatal(err)
			}
		},
	}
}

var impls = []struct {
	name   string
	newEnv func(t *testing.T) *env
}{{"local", localEnv}, {"redis", redisEnv}}

// noRenewers checks, at the end of the test, that every renewal goroutine
// has ended: Release waits for its lease's.
func noRenewers(t *testing.T) {
	t.Cleanup(func() {
		if n := renewers.Load(); n != 0 {
			t.Errorf("%d renewal goroutines still running after every lease was released", n)
		}
	})
}

// acquire takes a lease that the test's end releases if the test did not.
func acquire(t *testing.T, m Manager, name string, ttl time.Duration) *Lease {
	t.Helper()
	l, err := m.Acquire(context.Background(), name, ttl)
	if err != nil {
		t.Fatalf("acquire %q: %v", name, err)
	}
	t.Cleanup(func() { _ = l.Release(context.Background()) })
	return l
}

// eventually polls f every 10 ms until it is true, failing after 10 s.
func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10 s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// wantHeld checks that err says name is held by owner.
func wantHeld(t *testing.T, err error, name, owner string, ttl time.Duration) {
	t.Helper()
	var he *HeldError
	if !errors.Is(err, ErrHeld) || !errors.As(err, &he) {
		t.Fatalf("acquire %q: %v, want ErrHeld", name, err)
	}
	if he.Name != name || he.Owner != owner || he.Remaining <= 0 || he.Remaining > ttl {
		t.Errorf("held error %+v, want %q held by %s with 0 < remaining <= %s", he.Info, name, owner, ttl)
	}
	if !strings.Contains(err.Error(), owner) {
		t.Errorf("error %q does not name the holder", err)
	}
}

func waitLost(t *testing.T, l *Lease) {
	t.Helper()
	select {
	case <-l.Lost():
	case <-time.After(10 * time.Second):
		t.Fatalf("lease %q not reported lost within 10 s", l.Name())
	}
}

func TestConformance(t *testing.T) {
	cases := []struct {
		name string
		run  func(t *testing.T, e *env)
	}{
		{"exclusive", testExclusive},
		{"expiry", testExpiry},
		{"renewal", testRenewal},
		{"lost", testLost},
		{"held", testHeld},
		{"acquire wait", testAcquireWait},
	}
	for _, impl := range impls {
		t.Run(impl.name, func(t *testing.T) {
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					noRenewers(t)
					c.run(t, impl.newEnv(t))
				})
			}
		})
	}
}

// One holder at a time, whoever asks; the name is free again after Release.
func testExclusive(t *testing.T, e *env) {
	ctx := context.Background()
	const name, ttl = "src/t1/s1", 10 * time.Second
	a, a2, b := e.newManager("agent-a"), e.newManager("agent-a"), e.newManager("agent-b")
	la := acquire(t, a, name, ttl)
	if la.Name() != name || !strings.HasPrefix(la.Owner(), "agent-a-") {
		t.Errorf("lease %q of %q", la.Name(), la.Owner())
	}
	// The holder's own manager, one with the same name, and another agent.
	for i, m := range []Manager{a, a2, b} {
		l, err := m.Acquire(ctx, name, ttl)
		if l != nil {
			t.Fatalf("manager %d took a held lease", i)
		}
		wantHeld(t, err, name, la.Owner(), ttl)
	}
	if err := la.Check(); err != nil {
		t.Errorf("check while held: %v", err)
	}
	acquire(t, b, "src/t1/s2", ttl) // other names are free
	if _, err := a.Acquire(ctx, name, MinTTL/2); err == nil || errors.Is(err, ErrHeld) {
		t.Errorf("ttl below the minimum: %v, want a plain error", err)
	}

	if err := la.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := la.Release(ctx); err != nil {
		t.Errorf("second release: %v", err)
	}
	if err := la.Check(); !errors.Is(err, ErrLost) {
		t.Errorf("check after release: %v, want ErrLost", err)
	}
	lb := acquire(t, a2, name, ttl)
	if lb.Owner() == la.Owner() {
		t.Errorf("two managers named agent-a share the owner %q", lb.Owner())
	}
}

// A holder that stops renewing (killed) loses the lease after its ttl.
func testExpiry(t *testing.T, e *env) {
	const name, ttl = "src/t1/s1", 300 * time.Millisecond
	a, b := e.newManager("agent-a"), e.newManager("agent-b")
	start := time.Now()
	la := acquire(t, a, name, ttl)
	la.abandon()
	_, err := b.Acquire(context.Background(), name, ttl)
	wantHeld(t, err, name, la.Owner(), ttl)
	if e.advance != nil {
		e.advance(ttl)
	}
	var lb *Lease
	eventually(t, "the abandoned lease expires", func() bool {
		l, err := b.Acquire(context.Background(), name, 10*time.Second)
		if err != nil && !errors.Is(err, ErrHeld) {
			t.Fatal(err)
		}
		lb = l
		return err == nil
	})
	t.Cleanup(func() { _ = lb.Release(context.Background()) })
	if e.advance == nil {
		// Redis expires on the millisecond.
		if d := time.Since(start); d < ttl-5*time.Millisecond {
			t.Errorf("taken over %s after acquisition, before the ttl of %s", d, ttl)
		}
	}
	if err := lb.Check(); err != nil {
		t.Error(err)
	}
}

// Renewal keeps a lease well past its ttl.
func testRenewal(t *testing.T, e *env) {
	// A renewal every 300 ms; only a 600 ms stall of the renewal goroutine
	// would lose the lease.
	const name, ttl = "src/t1/s1", 900 * time.Millisecond
	a, b := e.newManager("agent-a"), e.newManager("agent-b")
	la := acquire(t, a, name, ttl)
	for end := time.Now().Add(3*ttl + ttl/2); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		l, err := b.Acquire(context.Background(), name, ttl)
		if l != nil {
			_ = l.Release(context.Background())
			t.Fatal("another owner took a lease that is being renewed")
		}
		if !errors.Is(err, ErrHeld) {
			t.Fatal(err)
		}
		if err := la.Check(); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-la.Lost():
		t.Fatal("renewed lease reported lost")
	default:
	}
	if err := la.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A lease deleted behind its holder's back is reported lost, whether the
// name is free or taken meanwhile, and its Release leaves the new holder's
// lease alone.
func testLost(t *testing.T, e *env) {
	for _, tc := range []struct {
		name       string
		takenFirst bool   // another agent takes the name before the holder's renewal
		reason     string // in the lost error
	}{
		{"deleted", false, "gone"},
		{"taken over", true, "taken by agent-b-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const name, ttl = "src/t1/s1", 300 * time.Millisecond
			a, b := e.newManager("agent-a"), e.newManager("agent-b")
			la := acquire(t, a, name, ttl)
			e.steal(name)
			var lb *Lease
			if tc.takenFirst {
				lb = acquire(t, b, name, 10*time.Second)
			}
			waitLost(t, la)
			err := la.Check()
			if !errors.Is(err, ErrLost) || !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("check: %v, want ErrLost with %q", err, tc.reason)
			}
			if lb == nil {
				lb = acquire(t, b, name, 10*time.Second)
			}
			if err := la.Release(context.Background()); err != nil {
				t.Fatal(err)
			}
			if err := lb.Check(); err != nil {
				t.Errorf("new holder after the old one's release: %v", err)
			}
			held, err := b.Held(context.Background(), name)
			if err != nil || len(held) != 1 || held[0].Owner != lb.Owner() {
				t.Errorf("held %+v, %v; want the new holder's lease", held, err)
			}
		})
	}
}

// Held lists live leases by prefix with their owners.
func testHeld(t *testing.T, e *env) {
	ctx := context.Background()
	const ttl = 10 * time.Second
	a, b := e.newManager("agent-a"), e.newManager("agent-b")
	owners := map[string]string{}
	for _, n := range []string{"src/t1/a", "src/t1/b"} {
		owners[n] = acquire(t, a, n, ttl).Owner()
	}
	// Glob characters in names are plain characters to Held.
	for _, n := range []string{"src/t2/a", "prune", "glob/a*b", "glob/axb"} {
		owners[n] = acquire(t, b, n, ttl).Owner()
	}
	gone := acquire(t, b, "src/t1/gone", ttl)
	if err := gone.Release(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"src/t1/", []string{"src/t1/a", "src/t1/b"}},
		{"src/", []string{"src/t1/a", "src/t1/b", "src/t2/a"}},
		{"", []string{"glob/a*b", "glob/axb", "prune", "src/t1/a", "src/t1/b", "src/t2/a"}},
		{"glob/a*", []string{"glob/a*b"}},
		{"prune", []string{"prune"}},
		{"nothing", nil},
	} {
		got, err := a.Held(ctx, tc.prefix)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, i := range got {
			names = append(names, i.Name)
			if i.Owner != owners[i.Name] || i.Remaining <= 0 || i.Remaining > ttl {
				t.Errorf("Held(%q): %+v, want owner %s and 0 < remaining <= %s", tc.prefix, i, owners[i.Name], ttl)
			}
		}
		if strings.Join(names, ",") != strings.Join(tc.want, ",") {
			t.Errorf("Held(%q) = %v, want %v", tc.prefix, names, tc.want)
		}
	}
}

// counting counts Acquire calls, to see AcquireWait retry.
type counting struct {
	Manager
	calls atomic.Int32
}

func (c *counting) Acquire(ctx context.Context, name string, ttl time.Duration) (*Lease, error) {
	c.calls.Add(1)
	return c.Manager.Acquire(ctx, name, ttl)
}

type result struct {
	l   *Lease
	err error
}

func testAcquireWait(t *testing.T, e *env) {
	const name, poll = "src/t1/s1", 20 * time.Millisecond
	wait := func(ctx context.Context, m Manager, ttl time.Duration) chan result {
		ch := make(chan result, 1)
		go func() {
			l, err := AcquireWait(ctx, m, name, ttl, poll)
			ch <- result{l, err}
		}()
		return ch
	}
	get := func(t *testing.T, ch chan result) result {
		select {
		case r := <-ch:
			if r.l != nil {
				t.Cleanup(func() { _ = r.l.Release(context.Background()) })
			}
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("AcquireWait did not return within 10 s")
			return result{}
		}
	}

	t.Run("after expiry", func(t *testing.T) {
		const ttl = 300 * time.Millisecond
		a, b := e.newManager("agent-a"), &counting{Manager: e.newManager("agent-b")}
		acquire(t, a, name, ttl).abandon()
		ch := wait(context.Background(), b, 10*time.Second)
		eventually(t, "AcquireWait retries", func() bool { return b.calls.Load() >= 2 })
		if e.advance != nil {
			e.advance(ttl)
		}
		r := get(t, ch)
		if r.err != nil || r.l.Check() != nil {
			t.Fatalf("AcquireWait: %v", r.err)
		}
		if !strings.HasPrefix(r.l.Owner(), "agent-b-") {
			t.Errorf("acquired by %s", r.l.Owner())
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		a, b := e.newManager("agent-a"), &counting{Manager: e.newManager("agent-b")}
		la := acquire(t, a, name, 10*time.Second)
		ctx, cancel := context.WithCancel(context.Background())
		ch := wait(ctx, b, 10*time.Second)
		eventually(t, "AcquireWait retries", func() bool { return b.calls.Load() >= 2 })
		cancel()
		r := get(t, ch)
		if r.l != nil || !errors.Is(r.err, context.Canceled) {
			t.Errorf("cancelled AcquireWait: %v, %v; want context.Canceled", r.l, r.err)
		}
		if err := la.Check(); err != nil {
			t.Errorf("holder: %v", err)
		}
	})
	t.Run("other error", func(t *testing.T) {
		b := &counting{Manager: e.newManager("agent-b")}
		r := get(t, wait(context.Background(), b, 0))
		if r.l != nil || r.err == nil || errors.Is(r.err, ErrHeld) || b.calls.Load() != 1 {
			t.Errorf("AcquireWait with a bad ttl: %v after %d calls, want its error at once", r.err, b.calls.Load())
		}
	})
}

// Local expires exactly on its clock, and its holders' Check agrees.
func TestLocalClock(t *testing.T) {
	noRenewers(t)
	c := &testClock{fixed: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	ctx := context.Background()
	a := NewLocal("agent-a", c.now)
	b := &Local{t: a.t, tokens: &tokens{owner: newOwner("agent-b")}}
	const ttl = time.Hour // no renewal (every 20 minutes) runs during the test
	la := acquire(t, a, "x", ttl)
	c.advance(59 * time.Minute)
	_, err := b.Acquire(ctx, "x", ttl)
	var he *HeldError
	if !errors.As(err, &he) || he.Remaining != time.Minute {
		t.Fatalf("after 59 minutes: %v, want held for another 1m0s", err)
	}
	held, _ := b.Held(ctx, "")
	if len(held) != 1 || held[0] != (Info{"x", la.Owner(), time.Minute}) {
		t.Errorf("held %+v", held)
	}
	if err := la.Check(); err != nil {
		t.Errorf("check before expiry: %v", err)
	}
	c.advance(time.Minute)
	if err := la.Check(); !errors.Is(err, ErrLost) {
		t.Errorf("check at expiry: %v, want ErrLost", err)
	}
	select {
	case <-la.Lost():
	default:
		t.Error("Check found the lease expired but Lost is open")
	}
	if held, _ := b.Held(ctx, ""); len(held) != 0 {
		t.Errorf("held after expiry: %+v", held)
	}
	lb := acquire(t, b, "x", ttl)
	if err := la.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := lb.Check(); err != nil {
		t.Errorf("new holder after the expired one's release: %v", err)
	}
}

// Redis stops, restarts or stalls under a held lease.
func TestRedisOutage(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ttl    time.Duration
		outage func(t *testing.T, srv *redisserver.Server, admin *redis.Client, logs *observer.ObservedLogs)
		reason string // of the loss; "" if the lease must survive
	}{
		{
			// Redis restarts without its data right after the acquisition:
			// the renewal at 1 s fails, the one at 2 s (before the deadline
			// at 3 s) finds no key and must not re-create it.
			name: "restarted", ttl: 3 * time.Second, reason: "gone",
			outage: func(t *testing.T, srv *redisserver.Server, _ *redis.Client, logs *observer.ObservedLogs) {
				stop(t, srv)
				eventually(t, "a renewal fails", func() bool { return logs.FilterMessage("lease renewal failing; retrying").Len() > 0 })
				start(t, srv)
			},
		},
		{
			// Redis stays down past the lease's ttl.
			name: "down past ttl", ttl: time.Second, reason: "not renewed within its ttl",
			outage: func(t *testing.T, srv *redisserver.Server, _ *redis.Client, logs *observer.ObservedLogs) {
				stop(t, srv)
				eventually(t, "the lease is lost", func() bool { return logs.FilterMessage("lease lost").Len() > 0 })
				start(t, srv)
			},
		},
		{
			// Redis stalls right after the acquisition, for 1.6 s of the
			// 3 s ttl: the renewal at 1 s times out, the one at 2 s
			// succeeds, and the lease is kept.
			name: "stalled", ttl: 3 * time.Second,
			outage: func(t *testing.T, _ *redisserver.Server, admin *redis.Client, logs *observer.ObservedLogs) {
				if err := admin.Do(context.Background(), "CLIENT", "PAUSE", 1600, "ALL").Err(); err != nil {
					t.Fatal(err)
				}
				eventually(t, "a renewal fails", func() bool { return logs.FilterMessage("lease renewal failing; retrying").Len() > 0 })
				eventually(t, "renewals recover", func() bool { return logs.FilterMessage("lease renewal recovered").Len() > 0 })
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			noRenewers(t)
			srv := redisserver.ForTest(t)
			core, logs := observer.New(zapcore.DebugLevel)
			log := zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), core))
			a := NewRedis(testClient(t, srv), testPrefix, "agent-a", log)
			b := NewRedis(testClient(t, srv), testPrefix, "agent-b", log)
			const name = "src/t1/s1"
			la := acquire(t, a, name, tc.ttl)

			tc.outage(t, srv, testClient(t, srv), logs)

			ctx := context.Background()
			if tc.reason == "" {
				if err := la.Check(); err != nil {
					t.Fatalf("after the stall: %v", err)
				}
				_, err := b.Acquire(ctx, name, tc.ttl)
				wantHeld(t, err, name, la.Owner(), tc.ttl)
			} else {
				waitLost(t, la)
				if err := la.Check(); !errors.Is(err, ErrLost) || !strings.Contains(err.Error(), tc.reason) {
					t.Errorf("check: %v, want ErrLost with %q", err, tc.reason)
				}
				// Not re-created by a renewal.
				check := testClient(t, srv)
				eventually(t, "Redis answers", func() bool { return check.Ping(ctx).Err() == nil })
				if n, err := check.Exists(ctx, testPrefix+name).Result(); err != nil || n != 0 {
					t.Errorf("lease key exists (%d, %v) after the loss", n, err)
				}
				// A fresh Acquire works once Redis is back (the pool may
				// hold a connection to the old server at first).
				var lb *Lease
				eventually(t, "another agent acquires", func() bool {
					lb, _ = b.Acquire(ctx, name, tc.ttl)
					return lb != nil
				})
				t.Cleanup(func() { _ = lb.Release(ctx) })
				if err := la.Release(ctx); err != nil {
					t.Errorf("release of the lost lease: %v", err)
				}
				if err := lb.Check(); err != nil {
					t.Errorf("new holder after the old one's release: %v", err)
				}
			}
			if err := la.Release(ctx); err != nil {
				t.Error(err)
			}
			warns, errs := logs.FilterMessage("lease renewal failing; retrying").Len(), logs.FilterMessage("lease lost").Len()
			if wantErrs := map[bool]int{true: 0, false: 1}[tc.reason == ""]; warns != 1 || errs != wantErrs {
				t.Errorf("%d warnings and %d errors logged, want 1 and %d", warns, errs, wantErrs)
			}
		})
	}
}

func stop(t *testing.T, srv *redisserver.Server) {
	t.Helper()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
}

func start(t *testing.T, srv *redisserver.Server) {
	t.Helper()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
}
