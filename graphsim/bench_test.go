package graphsim_test

import (
	"crypto/tls"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backup-proxy/backup-proxy/graphsim"
)

// BenchmarkServer measures the simulator's own capacity over loopback HTTPS
// with throttling off and many parallel clients, so later benchmarks can
// show graphsim is not their bottleneck. Clients and server share the
// machine's cores, so the figures are a lower bound.
func BenchmarkServer(b *testing.B) {
	o := graphsim.Options{Seed: 1, Users: 2, Sites: 2, FilesPerDrive: 200, FoldersPerDrive: 10, Apps: 1,
		AppKeyBits: 1024, NoThrottle: true, TokenLifetime: 24 * time.Hour,
		SizeMix: []graphsim.SizeClass{{Weight: 1, Min: 1 << 20, Max: 1 << 20}}}
	s := start(b, o)
	app := s.Tenant().Apps[0]
	tok := token(b, s, app)
	d := s.Tenant().Drives[0].ID
	items, err := s.DriveItems(d)
	if err != nil {
		b.Fatal(err)
	}
	var files []graphsim.Item
	for _, it := range items {
		if !it.Folder {
			files = append(files, it)
		}
	}
	c := newClient(b, s, app)
	var urls []string
	for _, f := range files[:20] {
		r := c.get("/drives/" + d + "/items/" + f.ID + "/content")
		urls = append(urls, r.header.Get("Location"))
	}

	transports := map[string]func() *http.Transport{
		"h2": s.Transport,
		"http1": func() *http.Transport {
			t := s.Transport()
			t.ForceAttemptHTTP2 = false
			t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			return t
		},
	}
	for _, proto := range []string{"h2", "http1"} {
		b.Run("metadata-"+proto, func(b *testing.B) {
			hc := &http.Client{Transport: transports[proto]()}
			var n atomic.Int64
			b.SetParallelism(16)
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					req, _ := http.NewRequest("GET", s.GraphURL()+"/v1.0/drives/"+d+"/items/"+files[int(i)%len(files)].ID, nil)
					req.Header.Set("Authorization", "Bearer "+tok)
					resp, err := hc.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
		})
		b.Run("download-1MiB-"+proto, func(b *testing.B) {
			hc := &http.Client{Transport: transports[proto]()}
			var n atomic.Int64
			b.SetBytes(1 << 20)
			b.SetParallelism(8)
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := hc.Get(urls[int(n.Add(1))%len(urls)])
					if err != nil {
						b.Error(err)
						return
					}
					m, _ := io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 || m != 1<<20 {
						b.Errorf("status %d, %d bytes", resp.StatusCode, m)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)*(1<<20)/1e6/time.Since(start).Seconds(), "MB/s-served")
		})
	}
}

// BenchmarkContentGenerator is the raw speed of producing file bytes.
func BenchmarkContentGenerator(b *testing.B) {
	o := graphsim.Options{Seed: 1, Users: 1, Sites: 0, FilesPerDrive: 20, Apps: 1, AppKeyBits: 1024,
		SizeMix: []graphsim.SizeClass{{Weight: 1, Min: 4 << 20, Max: 4 << 20}}}
	s := start(b, o)
	d := s.Tenant().Drives[0].ID
	items, _ := s.DriveItems(d)
	var id string
	for _, it := range items {
		if !it.Folder {
			id = it.ID
		}
	}
	b.SetBytes(4 << 20)
	for b.Loop() {
		r, _, err := s.ItemContent(d, id)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			b.Fatal(err)
		}
	}
}
