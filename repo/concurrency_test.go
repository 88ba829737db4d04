package repo_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/backup-proxy/backup-proxy/repo"
)

// TestConcurrentWriters runs several jobs at once in one process, each
// storing from several goroutines, overlapping in content, while readers,
// verify and prune run alongside. Run it with -race.
func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	r := openRepo(t, t.TempDir(), repo.Options{PackSize: 512 << 10, Workers: 2})
	shared := []file{
		{id: "s0", path: "/shared/0", data: randomData(500, 700<<10)},
		{id: "s1", path: "/shared/1", data: textData(501, 1<<20)},
	}
	const jobs, perJob = 6, 6
	type result struct {
		rp    repo.RestorePointID
		files []file
	}
	results := make(chan result, jobs)
	errs := make(chan error, 64)
	var writers sync.WaitGroup
	for j := 0; j < jobs; j++ {
		writers.Add(1)
		go func() {
			defer writers.Done()
			src := fmt.Sprint("site:s", j%3)
			s, err := r.NewSession(ctx, repo.SessionOptions{Tenant: "t1", Source: src})
			if err != nil {
				errs <- err
				return
			}
			files := append([]file(nil), shared...)
			for i := 0; i < perJob; i++ {
				files = append(files, file{id: fmt.Sprintf("j%d-%d", j, i), path: fmt.Sprintf("/j%d/%d", j, i), data: randomData(uint64(j*100+i), (i+1)*150<<10)})
			}
			var inner sync.WaitGroup
			for g := 0; g < 3; g++ {
				inner.Add(1)
				go func() {
					defer inner.Done()
					for i := g; i < len(files); i += 3 {
						if _, err := s.StoreItem(ctx, itemMeta(files[i]), bytes.NewReader(files[i].data)); err != nil {
							errs <- err
						}
					}
				}()
			}
			inner.Wait()
			_ = s.SetDeltaLink("drive1", fmt.Sprint("link-", j))
			rp, err := s.Commit(ctx)
			if err != nil {
				errs <- err
				return
			}
			results <- result{rp.ID, files}
		}()
	}
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Add(1)
	go func() { // maintenance and readers alongside the writers
		defer bg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := r.Prune(ctx, repo.PruneOptions{}); err != nil {
				errs <- fmt.Errorf("prune: %w", err)
			}
			rep, err := r.Verify(ctx, repo.VerifyOptions{})
			if err != nil || !rep.OK() {
				errs <- fmt.Errorf("verify during writes: %v %v", err, rep.Problems)
			}
			rps, _ := r.ListRestorePoints(ctx, "t1", "")
			for _, rp := range rps {
				items, _, err := r.ListItems(ctx, repo.ListItemsRequest{RestorePoint: rp.ID, PageSize: 3})
				if err != nil {
					errs <- err
				}
				for _, it := range items {
					ir := r.OpenContent(ctx, it)
					var buf bytes.Buffer
					if _, err := ir.WriteTo(&buf); err != nil || int64(buf.Len()) != it.Size {
						errs <- fmt.Errorf("read %s during writes: %v", it.Path, err)
					}
					ir.Close()
				}
			}
		}
	}()
	writers.Wait()
	close(stop)
	bg.Wait()
	close(results)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	if _, err := r.Prune(ctx, repo.PruneOptions{}); err != nil {
		t.Fatal(err)
	}
	verifyClean(t, r, true)
	n := 0
	for res := range results {
		n++
		for _, f := range res.files {
			if got := readItem(t, r, res.rp, f.id); !bytes.Equal(got, f.data) {
				t.Fatalf("%s of %s differs", f.path, res.rp)
			}
		}
	}
	if n != jobs {
		t.Fatalf("%d jobs committed", n)
	}
	st, _ := r.Stats(ctx)
	if want := int64(2 + jobs*perJob); st.Chunks < want {
		t.Fatalf("%d chunks, want at least %d", st.Chunks, want)
	}
}
