package main

import (
	"context"
	"errors"
	"flag"
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

// repoConfig is where the repository's objects live (--repo-s3 …) and
// where the leases of the agents sharing it are.
type repoConfig struct {
	s3         string // s3://bucket[/prefix]; empty: the local directory
	leaseRedis string // redis:// URL of the leases, with s3
	endpoint   string
	region     string
	caFile     string
	plaintext  bool
	keyFile    string
	leaseTTL   time.Duration
	// syncInterval: how often restore points other agents wrote or forgot
	// are brought into the catalogue (jobs do it anyway when they start).
	syncInterval time.Duration

	bucket, prefix string // parsed from s3
}

// flags declares the repository's flags (serve, verify, prune).
func (c *repoConfig) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.s3, "repo-s3", "", "keep the repository's packs, index and restore points in an S3 bucket, s3://bucket[/prefix], shared by every agent given the same; credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; the catalogue stays under --data")
	fs.StringVar(&c.endpoint, "repo-s3-endpoint", "s3.amazonaws.com", "S3 endpoint host:port")
	fs.StringVar(&c.region, "repo-s3-region", "", "S3 region (empty: the endpoint's default)")
	fs.StringVar(&c.caFile, "repo-s3-ca", "", "PEM file of extra CA certificates to trust for the S3 endpoint")
	fs.BoolVar(&c.plaintext, "repo-s3-plaintext", false, "talk to the S3 endpoint over plain HTTP (only for a loopback test server: credentials and data would cross the network in clear)")
	fs.StringVar(&c.keyFile, "repo-key-file", "", "the repository's key file (default <data>/repository/key); agents sharing a repository need the same key")
	fs.StringVar(&c.leaseRedis, "lease-redis", "", "with --repo-s3: redis://host:port/db of the Redis holding the leases of the agents sharing that repository (one writer per source, no prune while others write); serve defaults to its --budget-redis; empty: no other agent writes the repository")
	fs.DurationVar(&c.leaseTTL, "repo-lease-ttl", time.Minute, "how long a source stays locked after its agent dies (leases are renewed every third of it)")
}

func (c *repoConfig) parse() error {
	if c.leaseRedis != "" {
		if _, err := redis.ParseURL(c.leaseRedis); err != nil {
			return fmt.Errorf("--lease-redis: %q is not a Redis URL like redis://127.0.0.1:6379/0: %w", c.leaseRedis, err)
		}
	}
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

// openRepository opens the repository of the data directory (creating it
// if need be when create is set): objects in the directory itself or in
// S3, leases in process or in Redis. The returned client, if any, is the
// leases' and must be closed after the repository.
func openRepository(ctx context.Context, log *zap.Logger, dir string, c repoConfig, create, readOnly bool) (*repo.Repository, *redis.Client, error) {
	opts := repo.Options{Logger: log.Named("repo"), KeyFile: c.keyFile, LeaseTTL: c.leaseTTL, ReadOnly: readOnly}
	var rc *redis.Client
	// A directory repository has one agent: its leases stay in process,
	// and a Redis outage cannot stop its jobs.
	if c.leaseRedis != "" && c.s3 != "" {
		var err error
		if rc, err = redisbudget.Client(c.leaseRedis); err != nil {
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
		if c.leaseRedis == "" {
			log.Warn("repository in S3 without --lease-redis: no other agent may write it")
		}
	}
	r, err := repo.Open(dir, opts)
	if errors.Is(err, repo.ErrNotFound) && create {
		opts.Create = true
		if r, err = repo.Open(dir, opts); err == nil {
			log.Info("repository created", zap.String("where", where), zap.Bool("encrypted", r.Encrypted()))
		}
	}
	if err != nil {
		closeRedis(rc)
		return nil, nil, fmt.Errorf("repository: %w", err)
	}
	if c.s3 != "" && !readOnly {
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
