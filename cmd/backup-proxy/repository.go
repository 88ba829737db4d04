package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/lease"
	"github.com/backup-proxy/backup-proxy/repo"
	"github.com/backup-proxy/backup-proxy/scheduler/redisbudget"
)

// repoConfig is where the repository's objects live (serve --repo-s3 …).
type repoConfig struct {
	s3        string // s3://bucket[/prefix]; empty: the local directory
	endpoint  string
	region    string
	caFile    string
	plaintext bool
	keyFile   string
	leaseTTL  time.Duration
	// syncInterval: how often restore points other agents wrote or forgot
	// are brought into the catalogue (jobs do it anyway when they start).
	syncInterval time.Duration

	bucket, prefix string // parsed from s3
}

func (c *repoConfig) parse() error {
	if c.leaseTTL < time.Second {
		return fmt.Errorf("--repo-lease-ttl: must be at least 1s, got %s", c.leaseTTL)
	}
	if c.syncInterval < 0 {
		return fmt.Errorf("--repo-sync-interval: must not be negative, got %s", c.syncInterval)
	}
	if c.s3 == "" {
		return nil
	}
	u, err := url.Parse(c.s3)
	if err != nil || u.Scheme != "s3" || u.Host == "" || u.User != nil || u.RawQuery != "" {
		return fmt.Errorf("--repo-s3: %q is not like s3://bucket or s3://bucket/prefix", c.s3)
	}
	c.bucket, c.prefix = u.Host, strings.Trim(u.Path, "/")
	if c.prefix != "" {
		c.prefix += "/"
	}
	if c.endpoint == "" || strings.Contains(c.endpoint, "/") {
		return fmt.Errorf("--repo-s3-endpoint: want host:port, got %q", c.endpoint)
	}
	if os.Getenv("AWS_ACCESS_KEY_ID") == "" || os.Getenv("AWS_SECRET_ACCESS_KEY") == "" {
		return errors.New("--repo-s3: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment (never on the command line)")
	}
	return nil
}

// openRepository opens (creating if need be) the repository of the data
// directory: objects in the directory itself or in S3, leases in process or
// in Redis. The returned client, if any, is the leases' and must be closed
// after the repository.
func openRepository(ctx context.Context, log *zap.Logger, dir string, c repoConfig, leaseRedis string) (*repo.Repository, *redis.Client, error) {
	opts := repo.Options{Logger: log.Named("repo"), KeyFile: c.keyFile, LeaseTTL: c.leaseTTL}
	var rc *redis.Client
	// A directory repository has one agent: its leases stay in process,
	// and a Redis outage cannot stop its jobs.
	if leaseRedis != "" && c.s3 != "" {
		var err error
		if rc, err = redisbudget.Client(leaseRedis); err != nil {
			return nil, nil, fmt.Errorf("lease Redis: %w", err)
		}
		host, _ := os.Hostname()
		opts.Leases = lease.NewRedis(rc, "", fmt.Sprintf("%s-%d", host, os.Getpid()), log.Named("lease"))
	}
	where := dir
	if c.s3 != "" {
		st, err := repo.NewS3Store(ctx, repo.S3Options{
			Endpoint: c.endpoint, Bucket: c.bucket, Prefix: c.prefix, Region: c.region, CAFile: c.caFile, Secure: !c.plaintext,
			AccessKey: os.Getenv("AWS_ACCESS_KEY_ID"), SecretKey: os.Getenv("AWS_SECRET_ACCESS_KEY"),
			TempDir: filepath.Join(dir, "tmp"), Logger: log.Named("s3"),
		})
		if err != nil {
			closeRedis(rc)
			return nil, nil, fmt.Errorf("--repo-s3: %w", err)
		}
		opts.Store, where = st, st.String()
		if leaseRedis == "" {
			log.Warn("repository in S3 without --lease-redis: no other agent may write it")
		}
	}
	r, err := repo.Open(dir, opts)
	if errors.Is(err, repo.ErrNotFound) {
		opts.Create = true
		if r, err = repo.Open(dir, opts); err == nil {
			log.Info("repository created", zap.String("where", where), zap.Bool("encrypted", r.Encrypted()))
		}
	}
	if err != nil {
		closeRedis(rc)
		return nil, nil, fmt.Errorf("repository: %w", err)
	}
	if c.s3 != "" {
		// Restore points other agents wrote are listed from the start.
		if rep, err := r.Sync(ctx); err != nil {
			log.Warn("repository sync", zap.Error(err))
		} else {
			log.Info("repository synced", zap.String("where", where), zap.Int("imported", rep.Imported), zap.Int("dropped", rep.Dropped))
		}
	}
	return r, rc, nil
}

func closeRedis(c *redis.Client) {
	if c != nil {
		_ = c.Close()
	}
}

// syncPeriodically runs r.Sync every interval until the returned stop is
// called, so that the catalogue lists what other agents committed.
func syncPeriodically(log *zap.Logger, r *repo.Repository, interval time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			rep, err := r.Sync(ctx)
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				log.Warn("repository sync", zap.Error(err))
			case rep.Imported+rep.Dropped+rep.Skipped > 0:
				log.Info("repository synced", zap.Int("imported", rep.Imported), zap.Int("dropped", rep.Dropped), zap.Int("skipped", rep.Skipped))
			}
		}
	}()
	return func() { cancel(); <-done }
}
