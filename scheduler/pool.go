package scheduler

import "github.com/backup-proxy/backup-proxy/pool"

// PoolApps is the AppSource of one tenant's applications in the pool.
func PoolApps(p *pool.Pool, tenantID string) AppSource {
	return AppSourceFunc(func() []App {
		apps := p.Apps(tenantID)
		out := make([]App, len(apps))
		for i, a := range apps {
			out[i] = poolApp{a}
		}
		return out
	})
}

// poolApp gives a pool application the ID method App needs.
type poolApp struct{ *pool.App }

func (a poolApp) ID() string { return a.ClientID }
