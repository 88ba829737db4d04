// Package version holds the agent's version. Release builds set it with
// -ldflags "-X github.com/backup-proxy/backup-proxy/internal/version.Version=1.2.3".
package version

// Version is the agent's version.
var Version = "0.1.0-dev"
