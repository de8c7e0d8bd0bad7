// Package app wires kproxy together: command-line flags, configuration, the
// source, the change tracker, the sync runner and the data planes.
package app

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/kproxy/kproxy/internal/model"
)

// Dataplane programs one way of delivering service traffic.
type Dataplane interface {
	// Sync makes the data plane match snap. full asks for a full resync (the
	// first sync, the periodic resync, or the sync after a failure); otherwise
	// only snap.Changed needs work. On error the previous state must stay in force.
	Sync(ctx context.Context, snap *model.Snapshot, full bool) error
	// Close stops the data plane's own goroutines and listeners.
	Close() error
}

// Version is set at build time with -ldflags "-X github.com/kproxy/kproxy/internal/app.Version=...".
var Version = "v0.1.0-dev"

// Run runs the kproxy command line and returns the exit code.
func Run(args []string) int {
	root := newRootCommand()
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "kproxy:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		return 1
	}
	return 0
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "kproxy",
		Short:         "A Kubernetes service proxy: Service virtual IPs and ports on a node",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "kproxy", Version)
		},
	})
	root.AddCommand(newRunCommand(), newValidateCommand(), newGetCommand(), newDescribeCommand(), newTraceCommand(), newCleanupCommand(), newInitNodeCommand())
	return root
}
