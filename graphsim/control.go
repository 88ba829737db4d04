package graphsim

import (
	"net/http"
	"strconv"
)

// Control endpoints under /_sim/ (no authentication; loopback only):
//
//	GET  /_sim/stats                 counters per app and tenant
//	POST /_sim/stats/reset           zero the counters
//	POST /_sim/mutate?create=N&modify=N&rename=N&delete=N
//	POST /_sim/delta/expire          make every outstanding delta token dead (410)
//	GET  /_sim/tenant                the tenant description (no private keys)
func (s *Server) serveControl(w http.ResponseWriter, r *http.Request) {
	switch p := r.URL.Path; {
	case p == "/_sim/stats" && r.Method == http.MethodGet:
		writeJSON(w, 200, s.Stats())
	case p == "/_sim/stats/reset" && r.Method == http.MethodPost:
		s.ResetStats()
		writeJSON(w, 200, s.Stats())
	case p == "/_sim/mutate" && r.Method == http.MethodPost:
		q := r.URL.Query()
		var req MutationRequest
		for _, f := range []struct {
			name string
			dst  *int
		}{{"create", &req.Create}, {"modify", &req.Modify}, {"rename", &req.Rename}, {"delete", &req.Delete}} {
			if v := q.Get(f.name); v != "" {
				n, err := strconv.Atoi(v)
				if err != nil || n < 0 {
					writeJSON(w, 400, map[string]string{"error": "bad " + f.name + ": " + v})
					return
				}
				*f.dst = n
			}
		}
		writeJSON(w, 200, s.Mutate(req))
	case p == "/_sim/delta/expire" && r.Method == http.MethodPost:
		s.ExpireDeltaTokens()
		writeJSON(w, 200, map[string]bool{"expired": true})
	case p == "/_sim/tenant" && r.Method == http.MethodGet:
		t := s.Tenant()
		for i := range t.Apps {
			t.Apps[i].Credentials = nil
		}
		writeJSON(w, 200, t)
	default:
		writeJSON(w, 404, map[string]string{"error": "unknown control endpoint " + r.Method + " " + p})
	}
}
