package graphsim

import (
	"sync"
	"sync/atomic"
)

// AppStats are the counters of one app, as GET /_sim/stats reports them.
type AppStats struct {
	ClientID             string `json:"client_id"`
	Requests             int64  `json:"requests"`
	RU                   int64  `json:"ru"`
	Throttled429         int64  `json:"throttled_429"`
	Throttled503         int64  `json:"throttled_503"`
	RetryAfterViolations int64  `json:"retry_after_violations"`
	Bytes                int64  `json:"bytes"`
}

// TenantStats are the totals over all apps plus the simulated production
// traffic lost to throttling (RU, one request per RU).
type TenantStats struct {
	Requests             int64 `json:"requests"`
	RU                   int64 `json:"ru"`
	Throttled429         int64 `json:"throttled_429"`
	Throttled503         int64 `json:"throttled_503"`
	RetryAfterViolations int64 `json:"retry_after_violations"`
	Bytes                int64 `json:"bytes"`
	ProductionThrottled  int64 `json:"production_throttled"`
}

// Stats is the measurement truth of a run.
type Stats struct {
	Apps   []AppStats  `json:"apps"`
	Tenant TenantStats `json:"tenant"`
}

type appCounters struct {
	requests, ru, t429, t503, violations, bytes atomic.Int64
}

type statsStore struct {
	mu    sync.RWMutex
	order []string
	apps  map[string]*appCounters
}

func newStatsStore() *statsStore { return &statsStore{apps: map[string]*appCounters{}} }

func (st *statsStore) app(clientID string) *appCounters {
	st.mu.RLock()
	a := st.apps[clientID]
	st.mu.RUnlock()
	if a != nil {
		return a
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if a = st.apps[clientID]; a == nil {
		a = &appCounters{}
		st.apps[clientID] = a
		st.order = append(st.order, clientID)
	}
	return a
}

func (st *statsStore) request(clientID string, ru int) {
	a := st.app(clientID)
	a.requests.Add(1)
	a.ru.Add(int64(ru))
}

func (st *statsStore) throttled(clientID string, status int) {
	if status == 503 {
		st.app(clientID).t503.Add(1)
	} else {
		st.app(clientID).t429.Add(1)
	}
}

func (st *statsStore) violation(clientID string)         { st.app(clientID).violations.Add(1) }
func (st *statsStore) addBytes(clientID string, n int64) { st.app(clientID).bytes.Add(n) }

func (st *statsStore) snapshot() Stats {
	st.mu.RLock()
	defer st.mu.RUnlock()
	out := Stats{Apps: make([]AppStats, 0, len(st.order))}
	for _, id := range st.order {
		a := st.apps[id]
		as := AppStats{ClientID: id, Requests: a.requests.Load(), RU: a.ru.Load(), Throttled429: a.t429.Load(),
			Throttled503: a.t503.Load(), RetryAfterViolations: a.violations.Load(), Bytes: a.bytes.Load()}
		out.Apps = append(out.Apps, as)
		out.Tenant.Requests += as.Requests
		out.Tenant.RU += as.RU
		out.Tenant.Throttled429 += as.Throttled429
		out.Tenant.Throttled503 += as.Throttled503
		out.Tenant.RetryAfterViolations += as.RetryAfterViolations
		out.Tenant.Bytes += as.Bytes
	}
	return out
}

func (st *statsStore) reset() {
	st.mu.RLock()
	defer st.mu.RUnlock()
	for _, a := range st.apps {
		a.requests.Store(0)
		a.ru.Store(0)
		a.t429.Store(0)
		a.t503.Store(0)
		a.violations.Store(0)
		a.bytes.Store(0)
	}
}

// Stats returns the counters since the start or the last ResetStats.
func (s *Server) Stats() Stats {
	out := s.stats.snapshot()
	out.Tenant.ProductionThrottled = s.throttle.productionThrottled()
	return out
}

// ResetStats zeroes the counters. Throttling state (buckets, Retry-After
// windows) is not touched: it is Microsoft's, not the measurement's.
func (s *Server) ResetStats() {
	s.stats.reset()
	s.throttle.resetProduction()
}

// SetProductionLoad changes the simulated production users' traffic on the
// tenant bucket (Options.ProductionLoad, RU per simulated minute) from now
// on: a morning peak, or a storm that throttles the tenant whatever the
// backup does.
func (s *Server) SetProductionLoad(ruPerMinute float64) {
	s.throttle.setProduction(ruPerMinute)
}
