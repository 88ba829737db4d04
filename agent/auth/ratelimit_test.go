package auth

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 6, 0, 0, 0, time.UTC)
	l := NewLimiter(10, 3, 100) // a call every 100ms, 3 at once
	for i := range 3 {
		if err := l.Allow("a", t0); err != nil {
			t.Fatalf("call %d within the burst: %v", i, err)
		}
	}
	var limited *RateLimitedError
	if err := l.Allow("a", t0); !errors.As(err, &limited) || limited.RetryAfter != 100*time.Millisecond {
		t.Fatalf("4th call = %v, want retry after 100ms", err)
	}
	// A refused call does not push the next one further out.
	if err := l.Allow("a", t0); !errors.As(err, &limited) || limited.RetryAfter != 100*time.Millisecond {
		t.Fatalf("5th call = %v, want retry after 100ms", err)
	}
	if err := l.Allow("b", t0); err != nil {
		t.Fatalf("another caller is limited by a's calls: %v", err)
	}
	if err := l.Allow("a", t0.Add(100*time.Millisecond)); err != nil {
		t.Fatalf("after the wait: %v", err)
	}
}

func TestLimiterIsBounded(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 6, 0, 0, 0, time.UTC)
	l := NewLimiter(1, 2, 3) // refilled after 2s
	for i := range 3 {
		if err := l.Allow(fmt.Sprint("known", i), t0); err != nil {
			t.Fatal(err)
		}
	}
	// A flood of new callers shares one bucket and tracks nobody more.
	var refused int
	for i := range 50 {
		if l.Allow(fmt.Sprint("flood", i), t0) != nil {
			refused++
		}
	}
	if got := l.Callers(); got != 3 {
		t.Errorf("tracking %d callers, want the bound 3", got)
	}
	if refused != 48 {
		t.Errorf("flood: %d of 50 refused, want 48 (one shared burst of 2)", refused)
	}
	if err := l.Allow("known0", t0); err != nil {
		t.Errorf("a known caller lost its budget to the flood: %v", err)
	}
	// Once the known callers are idle long enough to have refilled, their
	// slots go to new callers.
	later := t0.Add(3 * time.Second)
	if err := l.Allow("new", later); err != nil {
		t.Fatal(err)
	}
	if got := l.Callers(); got != 1 {
		t.Errorf("after the sweep: %d callers, want 1", got)
	}
}
