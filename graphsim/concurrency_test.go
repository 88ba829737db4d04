package graphsim_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"

	"github.com/backup-proxy/backup-proxy/graphsim"
)

// TestConcurrentClientsAndMutations runs crawls, item reads and downloads in
// parallel with mutations; under -race it checks the locking.
func TestConcurrentClientsAndMutations(t *testing.T) {
	o := small(graphsim.NewManualClock(t0))
	o.NoThrottle = true
	s := start(t, o)
	c := newClient(t, s, appByOrg(s, false))
	drives := s.Tenant().Drives

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := drives[w%len(drives)].ID
			next := s.GraphURL() + "/v1.0/drives/" + d + "/root/delta?$top=3"
			for range 40 {
				req, _ := http.NewRequest("GET", next, nil)
				req.Header.Set("Authorization", "Bearer "+c.token)
				resp, err := c.http.Do(req)
				if err != nil {
					errs <- err
					return
				}
				var page struct {
					Next  string           `json:"@odata.nextLink"`
					Delta string           `json:"@odata.deltaLink"`
					Value []map[string]any `json:"value"`
				}
				err = decodeJSON(resp, &page)
				if err != nil {
					errs <- err
					return
				}
				for _, it := range page.Value {
					if u, ok := it["@microsoft.graph.downloadUrl"].(string); ok {
						r, err := c.http.Get(u)
						if err != nil {
							errs <- err
							return
						}
						_, _ = io.Copy(io.Discard, r.Body)
						r.Body.Close()
						if r.StatusCode != 200 && r.StatusCode != 404 {
							errs <- fmt.Errorf("download: %d", r.StatusCode)
							return
						}
					}
				}
				next = page.Next
				if next == "" {
					next = page.Delta
				}
			}
		}()
	}
	for range 20 {
		s.Mutate(graphsim.MutationRequest{Create: 2, Modify: 2, Rename: 1, Delete: 1})
		_ = s.Stats()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func decodeJSON(resp *http.Response, v any) error {
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
