package scheduler

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"
)

// benchScheduler returns a scheduler with n apps whose limits are high
// enough that no decision has to wait, on a clock that stands still.
func benchScheduler(b *testing.B, n int) (*Scheduler, *FakeClock) {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "app-" + strconv.Itoa(i)
	}
	_, src := fakeApps(ids...)
	clock := NewFakeClock(t0)
	lim := Limits{AppPerMinute: 1 << 40, AppPer24h: 1 << 50, TenantPer5Min: 1 << 50}
	return New(zap.NewNop(), Config{Limits: lim, Clock: clock}, src, http.DefaultTransport), clock
}

// BenchmarkSchedule64Apps measures one scheduling decision for a tenant
// with 64 apps: choose the app, check and charge its budgets and the
// tenant's, and read the (unthrottled) response's signals. No network;
// the fake clock's Advance is included.
func BenchmarkSchedule64Apps(b *testing.B) {
	s, clock := benchScheduler(b, 64)
	ctx := context.Background()
	ok := http.Header{}
	b.ReportAllocs()
	for b.Loop() {
		g, err := s.acquire(ctx, "", ClassMetadata, 1, nil, false)
		if err != nil {
			b.Fatal(err)
		}
		clock.Advance(time.Microsecond) // the response comes later: its charge is restamped
		s.observe(&g, 200, ok, true)
	}
}

// BenchmarkSchedule64AppsMostCooling: 63 of the 64 apps are cooling down,
// so every decision scans past them to the one that is ready.
func BenchmarkSchedule64AppsMostCooling(b *testing.B) {
	s, clock := benchScheduler(b, 64)
	s.mu.Lock()
	for _, a := range s.apps[:63] {
		a.cool(clock.Now(), clock.Now().Add(time.Hour))
	}
	s.mu.Unlock()
	ctx := context.Background()
	ok := http.Header{}
	b.ReportAllocs()
	for b.Loop() {
		g, err := s.acquire(ctx, "", ClassMetadata, 1, nil, false)
		if err != nil {
			b.Fatal(err)
		}
		if g.app != s.apps[63] {
			b.Fatal("a cooling app was chosen")
		}
		clock.Advance(time.Microsecond)
		s.observe(&g, 200, ok, true)
	}
}
