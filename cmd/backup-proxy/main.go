// Command backup-proxy is the backup proxy agent for Microsoft 365.
//
//	backup-proxy demo [flags]    back up a simulated tenant end to end, with a summary
//	backup-proxy serve [flags]   run the agent's gRPC server
//	backup-proxy bench throttle  the throttling benchmark (three clients, two regimes)
//	backup-proxy verify [flags]  check the repository of a stopped agent
//	backup-proxy prune [flags]   apply retention and reclaim space (agent stopped)
//	backup-proxy version         print the version
//
// Exit codes: 0 success (or a clean shutdown on SIGINT/SIGTERM), 1 a runtime
// failure, 2 bad usage, 3 shutdown deadline exceeded (in-flight RPCs were cut
// off), 4 verify found damage.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/backup-proxy/backup-proxy/internal/version"
)

// Exit codes.
const (
	exitOK             = 0
	exitFailure        = 1
	exitUsage          = 2
	exitForcedShutdown = 3
)

const usage = `backup-proxy: backup proxy agent for Microsoft 365 (SharePoint Online, OneDrive)

Usage:
  backup-proxy demo [flags]    back up a simulated tenant end to end, with a summary
  backup-proxy serve [flags]   run the agent's gRPC server
  backup-proxy bench throttle  the throttling benchmark (three clients, two regimes)
  backup-proxy verify [flags]  check the repository of a stopped agent
  backup-proxy prune [flags]   apply retention and reclaim space (agent stopped)
  backup-proxy version         print the version

Run "backup-proxy <command> -h" for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "serve":
		return runServe(ctx, args[1:], stderr)
	case "demo":
		return runDemo(ctx, args[1:], stdout, stderr)
	case "bench":
		return runBench(ctx, args[1:], stdout, stderr)
	case "verify":
		return runVerify(ctx, args[1:], stdout, stderr)
	case "prune":
		return runPrune(ctx, args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, version.Version)
		return exitOK
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "backup-proxy: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
}
