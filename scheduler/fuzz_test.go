package scheduler

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

var fuzzNow = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

// fuzzSchedulers parse headers at the two header scales in use: real time
// and graphsim's 60-fold time.
func fuzzSchedulers() [2]*Scheduler {
	var out [2]*Scheduler
	for i, sec := range []time.Duration{time.Second, 60 * time.Second} {
		out[i] = New(nil, Config{Clock: NewFakeClock(fuzzNow), HeaderSecond: sec}, nil, nil)
	}
	return out
}

// FuzzRetryAfter: a Retry-After the scheduler accepts is a wait of zero to
// maxHeaderWait (never negative: a negative cooldown would let requests
// through inside Microsoft's window), and whole seconds are read exactly.
func FuzzRetryAfter(f *testing.F) {
	for _, v := range []string{
		"0", "1", "30", "120", " 7 ", "1.5", "-1", "+3", "0x10", "1e3", "1e400", "9223372036854775807",
		"Inf", "NaN", "Wed, 26 Nov 2026 12:00:30 GMT", "Tue, 25 Nov 2026 12:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "soon",
	} {
		f.Add(v, false)
	}
	scheds := fuzzSchedulers()
	f.Fuzz(func(t *testing.T, v string, scaled bool) {
		s := scheds[0]
		if scaled {
			s = scheds[1]
		}
		d, ok := s.retryAfter(http.Header{hRetryAfter: {v}}, fuzzNow)
		if !ok {
			if d != 0 {
				t.Fatalf("rejected %q with a wait of %v", v, d)
			}
			return
		}
		if limit := s.maxHeaderWait(); d < 0 || d > limit {
			t.Fatalf("Retry-After %q gave %v, want 0 to %v", v, d, limit)
		}
		trimmed := strings.TrimSpace(v)
		if n, err := strconv.ParseUint(trimmed, 10, 64); err == nil && n <= maxHeaderSeconds {
			if want := time.Duration(n) * s.cfg.HeaderSecond; d != want {
				t.Fatalf("Retry-After %q gave %v, want %v", v, d, want)
			}
		}
		if at, err := http.ParseTime(trimmed); err == nil && at.After(fuzzNow) && at.Sub(fuzzNow) < s.maxHeaderWait() {
			if want := at.Sub(fuzzNow); d != want {
				t.Fatalf("Retry-After %q gave %v, want %v", v, d, want)
			}
		}
	})
}

// FuzzRateLimitHeaders: accepted RateLimit headers describe a bucket the
// scheduler's arithmetic can use: a positive limit, 0 <= remaining <=
// limit (so the server's count, limit-remaining, is never negative), and a
// reset of 0 to maxHeaderWait. Integer input reads back exactly.
func FuzzRateLimitHeaders(f *testing.F) {
	f.Add("1250", "0", "35", false)
	f.Add("1250", "125", "12", false)
	f.Add("1250", "1250", "60", true)
	f.Add("0", "0", "1", false)
	f.Add("1250", "-5", "-1", false)
	f.Add("1250", "1300", "1.5", false)
	f.Add("9223372036854775807", "-9223372036854775808", "1e308", false)
	f.Add("1250", "10", "Inf", false)
	f.Add(" 600 ", "x", "", true)
	scheds := fuzzSchedulers()
	f.Fuzz(func(t *testing.T, limit, remaining, reset string, scaled bool) {
		s := scheds[0]
		if scaled {
			s = scheds[1]
		}
		h := http.Header{hRateLimitLimit: {limit}, hRateLimitRemaining: {remaining}, hRateLimitReset: {reset}}
		rl, ok := s.rateLimitHeaders(h)
		if !ok {
			return
		}
		if rl.limit <= 0 || rl.remaining < 0 || rl.remaining > rl.limit {
			t.Fatalf("limit %q remaining %q gave limit %d remaining %d", limit, remaining, rl.limit, rl.remaining)
		}
		if lim := s.maxHeaderWait(); rl.reset < 0 || rl.reset > lim {
			t.Fatalf("reset %q gave %v, want 0 to %v", reset, rl.reset, lim)
		}
		l, err1 := strconv.ParseInt(strings.TrimSpace(limit), 10, 64)
		r, err2 := strconv.ParseInt(strings.TrimSpace(remaining), 10, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("accepted non-integer limit %q or remaining %q", limit, remaining)
		}
		if rl.limit != l || (r >= 0 && r <= l && rl.remaining != r) {
			t.Fatalf("limit %q remaining %q read as %d, %d", limit, remaining, rl.limit, rl.remaining)
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(reset), 10, 64); err == nil && n > 0 && n <= maxHeaderSeconds {
			if want := time.Duration(n) * s.cfg.HeaderSecond; rl.reset != want {
				t.Fatalf("reset %q read as %v, want %v", reset, rl.reset, want)
			}
		}
	})
}
