package scheduler

import "time"

// AppStats describe one app as the scheduler sees it.
type AppStats struct {
	ClientID      string
	InRotation    bool      // usable and not taken out after a token failure
	Requests      int64     // HTTP requests sent with the app (a followed download counts too)
	RULastMinute  int64     // RU charged in the last minute (61 one-second slots)
	RULast24h     int64     // RU charged in the last 24 hours
	Throttled     int64     // 429 and 503 answers, $batch sub-requests included
	Throttled429  int64     //
	Throttled503  int64     //
	CooldownUntil time.Time // zero if not cooling down
	RatePerMinute float64   // current pacing rate, RU/min
}

// TenantStats describe the tenant's traffic through the scheduler.
type TenantStats struct {
	// At is when the snapshot was taken, on the scheduler's clock (the one
	// CooldownUntil and PausedUntil are on, time-scaled in a simulation).
	At   time.Time
	Apps map[string]AppStats // by client id

	Requests   int64 // RoundTrip calls
	Attempts   int64 // attempts, retries included
	Retries    int64 // attempts after the first
	Failed     int64 // RoundTrip calls that returned an error
	Throttled  int64 // 429 and 503 answers
	Violations int64 // slots granted inside a known Retry-After window: a bug counter, 0 by construction
	Queued     int   // requests waiting for a slot

	RULastMinute int64
	RULast5Min   int64 // what counts against the tenant bucket
	RULast24h    int64

	PausedUntil   time.Time // tenant-wide pause (429 without RateLimit headers); zero if none
	SharedBudget  bool      // the apps were found to share one bucket
	SharedLimit   int64     // that bucket's RU per minute
	RatePerMinute float64   // the tenant limiter's pacing rate (share of the tenant bucket), RU/min

	// Distributed: a shared budget (Config.Shared) is configured.
	Distributed bool
	// DistributedUp: it answers; false while the fallback share is in force.
	DistributedUp bool
	// RemoteCooldowns counts cooldowns other agents published that this
	// scheduler applied.
	RemoteCooldowns int64
}

// JobStats count one job's requests (WithJob).
type JobStats struct {
	Requests  int64
	Attempts  int64
	Throttled int64 // 429 and 503 answers the job's requests got
	Failed    int64
}

// Stats returns a snapshot. It is cheap enough to poll every second.
func (s *Scheduler) Stats() TenantStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	ns := s.ns(now)
	st := TenantStats{
		At: now, Apps: make(map[string]AppStats, len(s.apps)),
		Requests: s.requests, Attempts: s.attempts, Retries: s.retries, Failed: s.failed,
		Throttled: s.throttled, Violations: s.viol,
		Queued:       s.queues[ClassMetadata].n + s.queues[ClassDownload].n,
		RULastMinute: s.combined.win.used(ns), RULast5Min: s.tenant.win.used(ns), RULast24h: s.combined.day.used(ns),
		SharedBudget: s.shared, SharedLimit: s.sharedLimit, RatePerMinute: s.tenant.ratePerMinute(),
	}
	if s.sh != nil {
		st.Distributed, st.DistributedUp, st.RemoteCooldowns = true, s.sh.up, s.sh.received
	}
	if s.pauseUntil.After(now) {
		st.PausedUntil = s.pauseUntil
	}
	if s.shared && s.sharedPauseUntil.After(now) {
		st.PausedUntil = laterOf(st.PausedUntil, s.sharedPauseUntil)
	}
	s.tenant.recover(now)
	st.RatePerMinute = s.tenant.ratePerMinute()
	for _, a := range s.apps {
		a.b.recover(now)
		as := AppStats{
			ClientID: a.id, InRotation: a.app.Usable() && !a.outUntil.After(now),
			Requests: a.requests, RULastMinute: a.b.win.used(ns), RULast24h: a.b.day.used(ns),
			Throttled: a.t429 + a.t503, Throttled429: a.t429, Throttled503: a.t503,
			RatePerMinute: a.b.ratePerMinute(),
		}
		if a.cooldownUntil.After(now) {
			as.CooldownUntil = a.cooldownUntil
		}
		st.Apps[a.id] = as
	}
	return st
}

// JobStats returns the counters of a job's requests.
func (s *Scheduler) JobStats(job string) JobStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[job]
	if j == nil {
		return JobStats{}
	}
	return JobStats{Requests: j.requests, Attempts: j.attempts, Throttled: j.throttled, Failed: j.failed}
}

// ForgetJob drops a finished job's counters.
func (s *Scheduler) ForgetJob(job string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.jobs, job)
}
