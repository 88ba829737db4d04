package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/repo"
)

// exitDamaged: verify found damage in the repository.
const exitDamaged = 4

// openRepoOffline opens the repository of a data directory that no agent is
// using (the data directory lock says so). With --repo-s3 other agents may
// still be writing the store: the leases keep prune apart from them.
func openRepoOffline(ctx context.Context, dataDir string, c repoConfig, readOnly bool) (*repo.Repository, func(), error) {
	if err := c.parse(); err != nil {
		return nil, nil, err
	}
	unlock, err := lockDataDir(dataDir)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (while an agent runs, use its gRPC CatalogService.VerifyRepository)", err)
	}
	r, rc, err := openRepository(ctx, zap.NewNop(), filepath.Join(dataDir, "repository"), c, false, readOnly)
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return r, func() { r.Close(); closeRedis(rc); unlock() }, nil
}

// runVerify checks a repository: structure always, every byte with --read-data.
func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data", "backup-proxy-data", "data directory of a stopped agent")
	readData := fs.Bool("read-data", false, "also read, decrypt, decompress and hash every chunk")
	maxItems := fs.Int("max-damaged-items", 20, "damaged items to list by path")
	var rc repoConfig
	rc.flags(fs)
	if code, ok := parseOnly(fs, args, stderr, "verify"); !ok {
		return code
	}
	r, done, err := openRepoOffline(ctx, *dataDir, rc, true)
	if err != nil {
		fmt.Fprintf(stderr, "backup-proxy verify: %v\n", err)
		return exitFailure
	}
	defer done()
	start := time.Now()
	rep, err := r.Verify(ctx, repo.VerifyOptions{ReadData: *readData, MaxDamagedItems: *maxItems})
	if err != nil {
		fmt.Fprintf(stderr, "backup-proxy verify: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "checked %d packs, %d index files, %d chunks (%.1f MB read) in %s\n",
		rep.Packs, rep.IndexFiles, rep.ChunksChecked, float64(rep.BytesRead)/1e6, time.Since(start).Round(time.Millisecond))
	if rep.OrphanPacks > 0 {
		fmt.Fprintf(stdout, "%d orphan packs (left by an interrupted write; prune removes them)\n", rep.OrphanPacks)
	}
	for _, p := range rep.Problems {
		fmt.Fprintf(stdout, "problem: %s\n", p)
	}
	for _, d := range rep.DamagedItems {
		fmt.Fprintf(stdout, "damaged: restore point %s, %s %s (%s)\n", d.RestorePoint, d.Source, d.Path, d.Reason)
	}
	if rep.DamagedItemCount > len(rep.DamagedItems) {
		fmt.Fprintf(stdout, "… %d damaged items in all\n", rep.DamagedItemCount)
	}
	if !rep.OK() {
		fmt.Fprintln(stdout, "the repository is DAMAGED")
		return exitDamaged
	}
	fmt.Fprintln(stdout, "the repository is sound")
	return exitOK
}

// runPrune applies a retention policy and reclaims the space of what no
// restore point needs any more.
func runPrune(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("prune", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data", "backup-proxy-data", "data directory of a stopped agent")
	keepLast := fs.Int("keep-last", 0, "keep the newest N restore points of each source")
	keepWithin := fs.Duration("keep-within", 0, "keep restore points younger than this (e.g. 720h)")
	dryRun := fs.Bool("dry-run", false, "report what would be removed, change nothing")
	var rc repoConfig
	rc.flags(fs)
	if code, ok := parseOnly(fs, args, stderr, "prune"); !ok {
		return code
	}
	if *keepLast < 0 || *keepWithin < 0 {
		fmt.Fprintln(stderr, "backup-proxy prune: --keep-last and --keep-within must not be negative")
		return exitUsage
	}
	r, done, err := openRepoOffline(ctx, *dataDir, rc, false)
	if err != nil {
		fmt.Fprintf(stderr, "backup-proxy prune: %v\n", err)
		return exitFailure
	}
	defer done()
	if *keepLast > 0 || *keepWithin > 0 {
		forgotten, err := r.Forget(ctx, repo.ForgetPolicy{KeepLast: *keepLast, KeepWithin: *keepWithin, DryRun: *dryRun})
		if err != nil {
			fmt.Fprintf(stderr, "backup-proxy prune: forget: %v\n", err)
			return exitFailure
		}
		for _, rp := range forgotten {
			fmt.Fprintf(stdout, "forget %s (%s %s, %s)\n", rp.ID, rp.Tenant, rp.Source, rp.Time.Format(time.RFC3339))
		}
	}
	rep, err := r.Prune(ctx, repo.PruneOptions{DryRun: *dryRun})
	if err != nil {
		fmt.Fprintf(stderr, "backup-proxy prune: %v\n", err)
		return exitFailure
	}
	verb := "removed"
	if *dryRun {
		verb = "would remove"
	}
	fmt.Fprintf(stdout, "%s %d chunks; %d packs deleted, %d rewritten, %d orphan packs; %.1f MB freed\n",
		verb, rep.ChunksRemoved, rep.PacksDeleted, rep.PacksRewritten, rep.OrphanPacksDeleted, float64(rep.BytesFreed)/1e6)
	return exitOK
}

// parseOnly parses flags that take no positional arguments; ok is false
// when the command should exit with code.
func parseOnly(fs *flag.FlagSet, args []string, stderr io.Writer, name string) (code int, ok bool) {
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return exitOK, false
	case err != nil:
		return exitUsage, false
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "backup-proxy %s: unexpected arguments %q\n", name, fs.Args())
		return exitUsage, false
	}
	return 0, true
}
