package main

import (
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// usageArgs is cobra.RangeArgs, but its errors are usage errors.
func usageArgs(minArgs, maxArgs int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) < minArgs:
			return cli.Usagef("%s: want at least %d argument(s), got %d", cmd.CommandPath(), minArgs, len(args))
		case len(args) > maxArgs && maxArgs == 0:
			return cli.Usagef("%s: unexpected argument %s", cmd.CommandPath(), cli.QuoteIfNeeded(args[0]))
		case len(args) > maxArgs:
			return cli.Usagef("%s: want at most %d argument(s), got %d", cmd.CommandPath(), maxArgs, len(args))
		}
		return nil
	}
}

// configFlag returns the configuration file named by --config, else
// $SMTPQ_CONFIG, else the default path.
func configFlag(cmd *cobra.Command) string {
	v, _ := cmd.Flags().GetString("config")
	return pipeline.ConfigPath(v)
}

// loadConfig reads the configuration file; its error is one line.
func loadConfig(path string) (*pipeline.Config, error) {
	cfg, err := pipeline.LoadConfig(path)
	if err != nil {
		return nil, cli.OneLine(err)
	}
	return cfg, nil
}

// readFirstLine reads a password or token file (queuefile.ReadSecretFile);
// what says which file it is in the error.
func readFirstLine(path, what string) (string, error) {
	sec, err := queuefile.ReadSecretFile(path)
	if _, ok := err.(*fs.PathError); ok {
		return "", fmt.Errorf("%s: %w", what, err) // "open PATH: ..." names the file
	}
	if err != nil {
		return "", fmt.Errorf("%s %w", what, err) // "PATH: reason"
	}
	return sec.Reveal(), nil
}

// parseWhen parses a point in time given as RFC 3339 ("2026-01-02T15:04:05Z")
// or as a duration from now ("90m", "36h", "2d").
func parseWhen(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := parseDuration(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s is neither an RFC 3339 time (2006-01-02T15:04:05Z07:00) nor a duration (90m, 36h, 2d)", cli.QuoteIfNeeded(s))
	}
	if d < 0 {
		return time.Time{}, fmt.Errorf("negative duration %s", s)
	}
	return now.Add(d), nil
}

// parseDuration is time.ParseDuration plus whole days ("2d").
func parseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n > 100*365 {
			return 0, errors.New("bad number of days")
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}
