package main

import (
	"runtime"

	"github.com/spf13/cobra"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
	"github.com/smtpq/smtpq/cmd/smtpq/internal/service"
)

// newServiceCmd is "smtpq service": install, uninstall, start, stop,
// restart, reload and status. The work is done by package service
// (cmd/smtpq/internal/service); here are the flags and the help.
func newServiceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "service",
		Short: "Install smtpq as a system service and control it (systemd, SysV, upstart, OpenRC, launchd, Windows)",
		Long:  service.LongHelp,
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return cli.Usagef("unknown subcommand %s for %s (see %s --help)", cli.QuoteIfNeeded(args[0]), cmd.CommandPath(), cmd.CommandPath())
			}
			return cmd.Help()
		},
	}
	cmd.PersistentFlags().String("name", service.DefaultName, "service name")

	var startTypeFlag, userFlag string
	install := &cobra.Command{
		Use:   "install",
		Short: "Install the service: it runs \"smtpq run --config FILE\" (FILE made absolute)",
		Args:  usageArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			name, err := serviceNameFlag(cmd)
			if err != nil {
				return err
			}
			st, err := service.ParseStartType(startTypeFlag)
			if err != nil {
				return err
			}
			if err := service.CheckUser(userFlag, runtime.GOOS); err != nil {
				return err
			}
			m, err := newServiceManager(cmd, name)
			if err != nil {
				return err
			}
			return m.Install(service.InstallOptions{Config: configFlag(cmd), LoadConfig: loadConfig, User: userFlag, Start: st})
		},
	}
	install.Flags().StringVar(&startTypeFlag, "start-type", string(service.StartAuto), "auto (at boot), manual (on demand only) or disabled (not at all)")
	install.Flags().StringVar(&userFlag, "user", "", "run the service as this user (default: root; on Windows LocalSystem)")
	cmd.AddCommand(install)

	for _, c := range []struct {
		use, short string
		do         func(*service.Manager) error
	}{
		{"uninstall", "Stop the service if it runs and remove it, its rc links and pid file (logs are kept)", (*service.Manager).Uninstall},
		{"start", "Start the installed service", (*service.Manager).Start},
		{"stop", "Stop the service; it finishes the SMTP sessions in progress (up to 15s) first", (*service.Manager).Stop},
		{"restart", "Stop the service, then start it", (*service.Manager).Restart},
		{"reload", "Make the running service re-read its configuration (SIGHUP), without dropping sessions", (*service.Manager).Reload},
		{"status", "Say whether the service is installed and running, and with which configuration (exit 0 running, 3 stopped, 4 not installed)", (*service.Manager).Status},
	} {
		cmd.AddCommand(&cobra.Command{
			Use:   c.use,
			Short: c.short,
			Args:  usageArgs(0, 0),
			RunE: func(cmd *cobra.Command, _ []string) error {
				name, err := serviceNameFlag(cmd)
				if err != nil {
					return err
				}
				m, err := newServiceManager(cmd, name)
				if err != nil {
					return err
				}
				return c.do(m)
			},
		})
	}
	return cmd
}

func serviceNameFlag(cmd *cobra.Command) (string, error) {
	name, _ := cmd.Flags().GetString("name")
	return name, service.CheckName(name)
}

// newServiceManager finds the machine's service manager for the service
// name; it fails where there is none.
func newServiceManager(cmd *cobra.Command, name string) (*service.Manager, error) {
	return service.NewManager(service.Options{Name: name, Out: cmd.OutOrStdout(), SignalReload: signalReload})
}
