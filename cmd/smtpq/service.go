package main

// "smtpq service ...": install smtpq as a system service and control it,
// through github.com/kardianos/service, whatever the machine's service
// manager: systemd, SysV init scripts, upstart, OpenRC, launchd or the
// Windows service control manager. The installed service runs
//
//	<this executable> run --config <absolute config path>
//
// with SMTPQ_SERVICE=<name> in its environment, which tells "run" to hand
// control to the service manager (runUnderServiceManager) rather than wait
// for Ctrl-C. What each start type means on each manager is in
// serviceLongHelp and in README.md ("Running as a service").
//
// Who owns what: the definition files (unit, init script, plist, override,
// conf.d file) belong to the service manager once written; uninstall removes
// every one of them, the rc links and the pid file, and keeps the logs.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"

	"github.com/kardianos/service"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
	"github.com/smtpq/smtpq/pipeline"
)

const (
	defaultServiceName = "smtpq"

	// serviceEnv is set to the service's name in the environment of the
	// installed service. "smtpq run" then runs under the service manager's
	// control (Start/Stop of kardianos' Interface) even where kardianos
	// cannot tell that it was started by one: in a container, or under SysV
	// init while the init script that started it is still alive.
	serviceEnv = "SMTPQ_SERVICE"

	// servicePasswordEnv holds the password of the --user account when
	// installing on Windows (no flag takes a password: command lines are
	// visible to every user). Virtual accounts such as
	// "NT AUTHORITY\LocalService" need none.
	servicePasswordEnv = "SMTPQ_SERVICE_PASSWORD"

	// serviceShutdownGrace is how long SMTP sessions in progress may take to
	// finish when the service manager stops the service (an interactive
	// "smtpq run" allows 30s). With serviceStopTimeout it fits in the
	// shortest stop deadline among the managers: launchd's ExitTimeOut, 20s.
	serviceShutdownGrace = 15 * time.Second

	// serviceStopTimeout bounds Stop of the kardianos Interface: how long it
	// waits for the pipeline's Run to return after cancelling it.
	serviceStopTimeout = 20 * time.Second

	// scriptStopSeconds is how long the SysV script, upstart and OpenRC wait
	// after SIGTERM before they send SIGKILL.
	scriptStopSeconds = 30
)

// startType says when the service manager starts the service.
type startType string

const (
	startAuto     startType = "auto"     // at boot, and on demand
	startManual   startType = "manual"   // only on demand
	startDisabled startType = "disabled" // not at all until reinstalled
)

func parseStartType(s string) (startType, error) {
	switch st := startType(s); st {
	case startAuto, startManual, startDisabled:
		return st, nil
	}
	return "", cli.Usagef("--start-type %s: want auto, manual or disabled", cli.QuoteIfNeeded(s))
}

// serviceNameRE is what every manager accepts as a service name, a file
// name and a launchd label alike.
var serviceNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func checkServiceName(name string) error {
	if !serviceNameRE.MatchString(name) {
		return cli.Usagef("--name %s: want 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", cli.QuoteIfNeeded(name))
	}
	return nil
}

// unixUserRE is a portable POSIX user name (what useradd accepts).
var unixUserRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9._-]{0,31}\$?$`)

func checkServiceUser(user, goos string) error {
	if user == "" {
		return nil
	}
	if goos == "windows" {
		// DOMAIN\user, .\user, user@domain, NT AUTHORITY\LocalService.
		if strings.ContainsAny(user, "\"%") || strings.IndexFunc(user, unicode.IsControl) >= 0 {
			return cli.Usagef("--user %s: not a Windows account name", cli.QuoteIfNeeded(user))
		}
		return nil
	}
	if !unixUserRE.MatchString(user) {
		return cli.Usagef("--user %s: not a user name", cli.QuoteIfNeeded(user))
	}
	return nil
}

// unsafePathChar returns the first character of path that a service
// definition cannot carry safely, if any: the paths go into unit files,
// shell scripts, plists and a Windows command line, each with its own
// quoting rules (and systemd expands %, Windows %VAR%). On Unix only
// letters, digits and /._-+,:@=~ are allowed; on Windows anything but
// control characters, '"' and '%'.
func unsafePathChar(path, goos string) (rune, bool) {
	for _, r := range path {
		if unicode.IsControl(r) {
			return r, true
		}
		if goos == "windows" {
			if r == '"' || r == '%' {
				return r, true
			}
			continue
		}
		if unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("/._-+,:@=~", r) {
			continue
		}
		return r, true
	}
	return 0, false
}

// checkServicePath refuses a path the service definition cannot carry.
func checkServicePath(what, path, goos string) error {
	if r, bad := unsafePathChar(path, goos); bad {
		return fmt.Errorf("%s %s contains %q, which a service definition cannot carry safely; use a path without it (a symbolic link will do)", what, cli.QuoteIfNeeded(path), r)
	}
	return nil
}

// resolveServiceConfig makes the configuration path absolute (relative to
// the current folder), checks that the path can go into a service
// definition and that the file loads, and returns both.
func resolveServiceConfig(path, goos string) (string, *pipeline.Config, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", nil, fmt.Errorf("config %s: %w", path, err)
	}
	if err := checkServicePath("config", abs, goos); err != nil {
		return "", nil, err
	}
	cfg, err := loadConfig(abs)
	if err != nil {
		return "", nil, fmt.Errorf("refusing to install a service whose configuration does not load: %w", err)
	}
	return abs, cfg, nil
}

// serviceExecutable returns the absolute path of this executable, which the
// service will run, refusing one that will not be there later.
func serviceExecutable(goos string) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding this executable: %w", err)
	}
	if resolved, err := filepath.EvalSymlinks(exe); err == nil {
		exe = resolved
	}
	if strings.Contains(exe, "go-build") {
		return "", fmt.Errorf("this executable %s is a temporary build (go run); build it (make build) and install the service from bin/smtpq or a copy in /usr/local/bin", exe)
	}
	if err := checkServicePath("executable", exe, goos); err != nil {
		return "", err
	}
	return exe, nil
}

// installSpec is what "service install" installs.
type installSpec struct {
	name     string
	exe      string // absolute
	config   string // absolute
	user     string // empty: the manager's default (root, LocalSystem)
	password string // Windows --user password, from servicePasswordEnv
	start    startType
}

// kardianosConfig maps spec to kardianos' Config for the given platform
// (service.Platform()): the options that carry the start type, the custom
// SysV script, and the environment that marks the process as a service.
// Start types that kardianos cannot express are finished in afterInstall.
func kardianosConfig(spec installSpec, platform string) (*service.Config, error) {
	display := "smtpq mail queue"
	if spec.name != defaultServiceName {
		display += " (" + spec.name + ")"
	}
	c := &service.Config{
		Name:        spec.name,
		DisplayName: display,
		Description: "smtpq mail queue service: sends the mail queued by applications (config " + spec.config + ")",
		UserName:    spec.user,
		Executable:  spec.exe,
		Arguments:   []string{"run", "--config", spec.config},
		EnvVars:     map[string]string{serviceEnv: spec.name},
		Option:      service.KeyValue{},
	}
	switch platform {
	case platformSystemd:
		c.Option["ReloadSignal"] = "HUP" // systemctl reload: smtpq re-reads its configuration
		c.Dependencies = []string{"After=network-online.target", "Wants=network-online.target"}
		if spec.start == startDisabled {
			// systemctl mask refuses a unit file in /etc/systemd/system;
			// this is the nearest: "systemctl start" is refused.
			c.Dependencies = append(c.Dependencies, "RefuseManualStart=yes")
		}
	case platformSysV:
		c.Option["SysvScript"] = sysvScript(sysvParams{
			Name: spec.name, Exe: spec.exe, Args: c.Arguments, Env: c.EnvVars,
			User: spec.user, Start: spec.start,
			PIDFile: sysvPIDFile(spec.name), LogFile: sysvLogFile(spec.name), StopSeconds: scriptStopSeconds,
		})
	case platformUpstart:
		c.Option["LogOutput"] = true // else upstart discards the log ("console none")
	case platformOpenRC:
		// Start type, user and stop timeout go into /etc/conf.d/NAME.
	case platformLaunchd:
		c.Option["KeepAlive"] = spec.start == startAuto
		c.Option["RunAtLoad"] = spec.start == startAuto
	case platformWindows:
		c.Option["StartType"] = map[startType]string{
			startAuto: "automatic", startManual: "manual", startDisabled: "disabled",
		}[spec.start]
		// As systemd's Restart=always, RestartSec=120.
		c.Option["OnFailure"] = "restart"
		c.Option["OnFailureDelayDuration"] = "2m"
		c.Option["OnFailureResetPeriod"] = 24 * 60 * 60
		if spec.password != "" {
			c.Option["Password"] = spec.password
		}
	default:
		if spec.start != startAuto {
			return nil, fmt.Errorf("--start-type %s is not supported on %s: only auto", spec.start, platform)
		}
		if spec.user != "" && (platform == platformRCS || platform == platformProcd) {
			return nil, fmt.Errorf("--user is not supported on %s", platform)
		}
	}
	return c, nil
}

// newServiceCmd is "smtpq service": install, uninstall, start, stop,
// restart and status.
func newServiceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "service",
		Short: "Install smtpq as a system service and control it (systemd, SysV, upstart, OpenRC, launchd, Windows)",
		Long:  serviceLongHelp,
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return cli.Usagef("unknown subcommand %s for %s (see %s --help)", cli.QuoteIfNeeded(args[0]), cmd.CommandPath(), cmd.CommandPath())
			}
			return cmd.Help()
		},
	}
	cmd.PersistentFlags().String("name", defaultServiceName, "service name")

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
			st, err := parseStartType(startTypeFlag)
			if err != nil {
				return err
			}
			if err := checkServiceUser(userFlag, runtime.GOOS); err != nil {
				return err
			}
			m, err := newServiceManager(name, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			if err := m.needsPrivilege("install"); err != nil {
				return err
			}
			spec := installSpec{name: name, user: userFlag, start: st}
			if runtime.GOOS == "windows" && userFlag != "" {
				spec.password = os.Getenv(servicePasswordEnv)
			}
			var cfg *pipeline.Config
			if spec.config, cfg, err = resolveServiceConfig(configFlag(cmd), runtime.GOOS); err != nil {
				return err
			}
			if spec.exe, err = serviceExecutable(runtime.GOOS); err != nil {
				return err
			}
			if err := checkServiceCanStart(cfg, spec.user); err != nil {
				return err
			}
			return m.install(spec)
		},
	}
	install.Flags().StringVar(&startTypeFlag, "start-type", string(startAuto), "auto (at boot), manual (on demand only) or disabled (not at all)")
	install.Flags().StringVar(&userFlag, "user", "", "run the service as this user (default: root; on Windows LocalSystem)")
	cmd.AddCommand(install)

	for _, c := range []struct {
		use, short string
		do         func(*serviceManager) error
	}{
		{"uninstall", "Stop the service if it runs and remove it, its rc links and pid file (logs are kept)", (*serviceManager).uninstall},
		{"start", "Start the installed service", (*serviceManager).start},
		{"stop", "Stop the service; it finishes the SMTP sessions in progress (up to 15s) first", (*serviceManager).stop},
		{"restart", "Stop the service, then start it", (*serviceManager).restart},
		{"reload", "Make the running service re-read its configuration (SIGHUP), without dropping sessions", (*serviceManager).reload},
		{"status", "Say whether the service is installed and running, and with which configuration (exit 0 running, 3 stopped, 4 not installed)", (*serviceManager).status},
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
				m, err := newServiceManager(name, cmd.OutOrStdout())
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
	return name, checkServiceName(name)
}

const serviceLongHelp = `Install smtpq as a system service and control it, with the machine's service
manager: systemd, SysV init scripts, upstart, OpenRC, launchd (macOS) or the
Windows service control manager.

  smtpq service install --config FILE [--start-type auto|manual|disabled]
                        [--name NAME] [--user USER]
  smtpq service uninstall|start|stop|restart|status [--name NAME]

The service runs "smtpq run --config FILE" with FILE made absolute; install
refuses a configuration that does not load (or whose keys the service could
not read). --name defaults to "smtpq". Start types:

  auto      started at boot (the default)
  manual    installed, started only by "smtpq service start"
  disabled  installed, but not started at all until reinstalled

  systemd   auto: enabled. manual: not enabled. disabled: not enabled and
            RefuseManualStart=yes (systemctl mask refuses a unit that lives
            in /etc/systemd/system).
  SysV      auto: S links in /etc/rc2.d..rc5.d. manual: no S links.
            disabled: no S links, and the init script refuses "start".
  upstart   auto: "start on runlevel". manual: "manual" in
            /etc/init/NAME.override. disabled: also a pre-start that fails.
  OpenRC    auto: in the default runlevel. manual: in no runlevel.
            disabled: also a start_pre in /etc/conf.d/NAME that fails.
  launchd   auto: RunAtLoad and KeepAlive. manual: neither; "service start"
            loads and starts it. disabled: "launchctl disable system/NAME".
  Windows   auto: Automatic. manual: Manual (Demand-Start). disabled:
            Disabled.

Stopping lets SMTP sessions in progress finish for up to 15s, then closes
them (those messages are retried) and exits. status exits 0 when running, 3
when installed but not running, 4 when not installed. Where no service
manager is found, every command says so and exits 1.`

// Platforms as named by service.Platform().
const (
	platformSystemd = "linux-systemd"
	platformSysV    = "unix-systemv"
	platformUpstart = "linux-upstart"
	platformOpenRC  = "linux-openrc"
	platformRCS     = "linux-rcs"
	platformProcd   = "linux-procd"
	platformLaunchd = "darwin-launchd"
	platformWindows = "windows-service"
)

// errNoServiceManager is the answer of every command where there is none.
var errNoServiceManager = errors.New("no service manager found on this machine (looked for systemd, upstart, OpenRC, SysV init scripts in /etc/init.d, launchd and Windows services); run \"smtpq run --config FILE\" under your own supervisor")

// serviceManager runs the service commands for one service name against
// the machine's service manager.
type serviceManager struct {
	name     string
	platform string
	out      io.Writer
}

// newServiceManager finds the machine's service manager; it fails where
// there is none.
func newServiceManager(name string, out io.Writer) (*serviceManager, error) {
	platform := service.Platform()
	if platform == "" {
		return nil, errNoServiceManager
	}
	if platform == platformSysV {
		// kardianos falls back to SysV wherever it finds nothing else.
		if fi, err := os.Stat("/etc/init.d"); err != nil || !fi.IsDir() {
			return nil, errNoServiceManager
		}
	}
	return &serviceManager{name: name, platform: platform, out: out}, nil
}

// kardianos returns kardianos' handle on the service; its Interface is
// only used by Run, which the control commands never call.
func (m *serviceManager) kardianos(c *service.Config) (service.Service, error) {
	if c == nil {
		c = &service.Config{Name: m.name}
	}
	s, err := service.New(idleProgram{}, c)
	if errors.Is(err, service.ErrNoServiceSystemDetected) {
		return nil, errNoServiceManager
	}
	return s, err
}

type idleProgram struct{}

func (idleProgram) Start(service.Service) error { return nil }
func (idleProgram) Stop(service.Service) error  { return nil }

// needsPrivilege refuses early, with the reason, what only root (or an
// administrator) may do.
func (m *serviceManager) needsPrivilege(action string) error {
	if msg := privilegeProblem(); msg != "" {
		return fmt.Errorf("service %s: %s", action, msg)
	}
	return nil
}

// install installs spec; the caller has checked the privilege, the flags
// and the configuration.
func (m *serviceManager) install(spec installSpec) error {
	st, err := m.inspect()
	if err != nil {
		return err
	}
	if st.Installed {
		return fmt.Errorf("service %s is already installed (%s); uninstall it first (smtpq service uninstall --name %s)", m.name, st.Definition, m.name)
	}
	if spec.user != "" && m.platform == platformSysV {
		if err := lookPath("setpriv"); err != nil {
			return fmt.Errorf("--user on SysV needs setpriv (util-linux): %w", err)
		}
	}
	c, err := kardianosConfig(spec, m.platform)
	if err != nil {
		return err
	}
	s, err := m.kardianos(c)
	if err != nil {
		return err
	}
	if err := s.Install(); err != nil {
		return fmt.Errorf("installing service %s on %s: %w", m.name, m.platform, windowsHint(err))
	}
	if err := m.afterInstall(spec); err != nil {
		_ = s.Uninstall()
		m.cleanUp()
		return fmt.Errorf("installing service %s on %s: %w (the installation was removed again)", m.name, m.platform, err)
	}
	st, err = m.inspect()
	if err != nil {
		return err
	}
	fmt.Fprintf(m.out, "installed service %s (%s): %s\n", m.name, m.platform, st.Definition)
	fmt.Fprintf(m.out, "it runs:    %s\n", strings.Join(st.Command, " "))
	fmt.Fprintf(m.out, "start type: %s (%s)\n", spec.start, startTypeMeaning(spec.start, m.platform))
	if spec.user != "" {
		fmt.Fprintf(m.out, "user:       %s (it must be able to read and rename the files producers queue: see \"File permissions\" in README.md)\n", spec.user)
	}
	if st.Logs != "" {
		fmt.Fprintf(m.out, "logs:       %s\n", st.Logs)
	}
	if spec.start != startDisabled {
		fmt.Fprintf(m.out, "start it:   %s service start%s\n", spec.exe, nameArg(m.name))
	}
	return nil
}

// afterInstall finishes what kardianos' Install leaves to do for the start
// type, and writes the extra files some managers need.
func (m *serviceManager) afterInstall(spec installSpec) error {
	switch m.platform {
	case platformSystemd:
		if spec.start != startAuto {
			return runTool("systemctl", "disable", "--quiet", m.name+".service")
		}
	case platformSysV:
		if spec.start != startAuto {
			return removeRCLinks(m.name, "S")
		}
	case platformUpstart:
		return writeDefinition(upstartOverridePath(m.name), upstartOverride(spec), 0o644)
	case platformOpenRC:
		if err := writeDefinition(openRCConfPath(m.name), openRCConf(spec), 0o644); err != nil {
			return err
		}
		if spec.start != startAuto {
			return runTool("rc-update", "del", m.name, "default")
		}
	case platformLaunchd:
		if spec.start == startDisabled {
			return runTool("launchctl", "disable", "system/"+m.name)
		}
	}
	return nil
}

func (m *serviceManager) uninstall() error {
	if err := m.needsPrivilege("uninstall"); err != nil {
		return err
	}
	st, err := m.inspect()
	if err != nil {
		return err
	}
	if !st.Installed {
		return fmt.Errorf("service %s is not installed (%s)", m.name, m.platform)
	}
	if st.Running {
		if err := m.stop(); err != nil {
			return fmt.Errorf("not uninstalling service %s: %w", m.name, err)
		}
	}
	if m.platform == platformLaunchd && st.StartType == string(startDisabled) {
		// Leave no entry behind in launchd's database of disabled jobs.
		if err := runTool("launchctl", "enable", "system/"+m.name); err != nil {
			return err
		}
	}
	s, err := m.kardianos(nil)
	if err != nil {
		return err
	}
	if err := s.Uninstall(); err != nil {
		// OpenRC: rc-update fails for a service in no runlevel, after the
		// script is gone; that is not a failure to uninstall.
		if again, ierr := m.inspect(); ierr != nil || again.Installed {
			return fmt.Errorf("uninstalling service %s: %w", m.name, windowsHint(err))
		}
	}
	removed := m.cleanUp()
	fmt.Fprintf(m.out, "uninstalled service %s (%s): removed %s\n", m.name, m.platform, strings.Join(append([]string{st.Definition}, removed...), ", "))
	if st.Logs != "" {
		fmt.Fprintf(m.out, "logs kept:  %s\n", st.Logs)
	}
	return nil
}

// cleanUp removes what kardianos' Uninstall leaves behind and returns what
// it removed.
func (m *serviceManager) cleanUp() []string {
	var removed []string
	remove := func(path string) {
		if err := os.Remove(path); err == nil {
			removed = append(removed, path)
		}
	}
	switch m.platform {
	case platformSysV:
		links, _ := rcLinks(m.name, "")
		for _, l := range links {
			remove(l)
		}
		remove(sysvPIDFile(m.name))
	case platformSystemd:
		_ = runTool("systemctl", "reset-failed", m.name+".service")
	case platformUpstart:
		remove(upstartOverridePath(m.name))
	case platformOpenRC:
		remove(openRCConfPath(m.name))
	}
	return removed
}

// installed returns the service's state, or an error if it is not installed.
func (m *serviceManager) installed(action string) (*serviceState, error) {
	if err := m.needsPrivilege(action); err != nil {
		return nil, err
	}
	st, err := m.inspect()
	if err != nil {
		return nil, err
	}
	if !st.Installed {
		return nil, fmt.Errorf("service %s is not installed (%s); install it with: smtpq service install --config FILE%s", m.name, m.platform, nameArg(m.name))
	}
	return st, nil
}

func (m *serviceManager) start() error {
	st, err := m.installed("start")
	if err != nil {
		return err
	}
	if st.StartType == string(startDisabled) {
		return fmt.Errorf("service %s is disabled (installed with --start-type disabled); reinstall it with --start-type manual or auto to start it", m.name)
	}
	switch m.platform {
	case platformSysV:
		err = runInitScript(m.out, m.name, "start")
	case platformLaunchd:
		err = launchdStart(m.name, st)
	default:
		var s service.Service
		if s, err = m.kardianos(nil); err == nil {
			err = s.Start()
		}
	}
	if err != nil {
		return fmt.Errorf("starting service %s: %w", m.name, windowsHint(err))
	}
	return m.reportStarted()
}

// reportStarted waits a little for the service to be seen running, and
// says so, or fails pointing at the logs.
func (m *serviceManager) reportStarted() error {
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := m.inspect()
		if err != nil {
			return err
		}
		if st.Running {
			fmt.Fprintf(m.out, "service %s is running%s\n", m.name, pidText(st.PID))
			return nil
		}
		if time.Now().After(deadline) {
			where := ""
			if st.Logs != "" {
				where = "; see " + st.Logs
			}
			return fmt.Errorf("service %s did not stay running (%s)%s", m.name, st.stateWord(), where)
		}
		<-tick.C
	}
}

func (m *serviceManager) stop() error {
	st, err := m.installed("stop")
	if err != nil {
		return err
	}
	switch m.platform {
	case platformSysV:
		err = runInitScript(m.out, m.name, "stop")
	default:
		if !st.Running {
			fmt.Fprintf(m.out, "service %s is not running\n", m.name)
			return nil
		}
		var s service.Service
		if s, err = m.kardianos(nil); err == nil {
			err = s.Stop()
		}
	}
	if err != nil {
		return fmt.Errorf("stopping service %s: %w", m.name, windowsHint(err))
	}
	if m.platform != platformSysV {
		fmt.Fprintf(m.out, "service %s stopped\n", m.name)
	}
	return nil
}

func (m *serviceManager) restart() error {
	st, err := m.installed("restart")
	if err != nil {
		return err
	}
	if st.StartType == string(startDisabled) {
		return fmt.Errorf("service %s is disabled (installed with --start-type disabled); reinstall it with --start-type manual or auto to start it", m.name)
	}
	switch m.platform {
	case platformSysV, platformLaunchd:
		// kardianos' launchd Restart only reloads, which does not start a
		// manual service; the SysV script is run directly to see its output.
		if err := m.stop(); err != nil {
			return err
		}
		return m.start()
	}
	s, err := m.kardianos(nil)
	if err == nil {
		err = s.Restart()
	}
	if err != nil {
		return fmt.Errorf("restarting service %s: %w", m.name, windowsHint(err))
	}
	return m.reportStarted()
}

// reload sends the running service SIGHUP: it re-reads its configuration
// and keeps the old one if the new one does not validate (see its log).
func (m *serviceManager) reload() error {
	st, err := m.installed("reload")
	if err != nil {
		return err
	}
	if !st.Running || st.PID == 0 {
		return fmt.Errorf("service %s is not running (%s): nothing to reload", m.name, st.stateWord())
	}
	if err := signalReload(st.PID); err != nil {
		return fmt.Errorf("reloading service %s (pid %d): %w", m.name, st.PID, err)
	}
	fmt.Fprintf(m.out, "asked service %s (pid %d) to reload its configuration; its log says whether it took it\n", m.name, st.PID)
	return nil
}

// Exit statuses of "service status", as LSB init scripts and systemctl.
const (
	exitStatusStopped      = 3
	exitStatusNotInstalled = 4
)

func (m *serviceManager) status() error {
	st, err := m.inspect()
	if err != nil {
		return err
	}
	fmt.Fprint(m.out, st.report(m.name, m.platform))
	switch {
	case !st.Installed:
		return cli.WithCode(exitStatusNotInstalled, fmt.Errorf("service %s is not installed", m.name))
	case !st.Running:
		return cli.WithCode(exitStatusStopped, fmt.Errorf("service %s is installed but not running (%s)", m.name, st.stateWord()))
	}
	return nil
}

// serviceState is what status reports.
type serviceState struct {
	Installed  bool
	Definition string   // the unit file, init script, plist or registry key
	Command    []string // what the service manager runs
	StartType  string   // auto, manual, disabled; empty when unknown
	Running    bool
	State      string // the manager's word, when it says more than running or not
	PID        int    // 0 when unknown
	Logs       string // where its output goes
}

func (st *serviceState) stateWord() string {
	switch {
	case st.State != "":
		return st.State
	case st.Running:
		return "running"
	}
	return "stopped"
}

// report is the text "service status" prints.
func (st *serviceState) report(name, platform string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "service:    %s (%s)\n", name, platform)
	if !st.Installed {
		b.WriteString("installed:  no\n")
		return b.String()
	}
	fmt.Fprintf(&b, "installed:  yes, %s\n", st.Definition)
	startType := st.StartType
	if startType == "" {
		startType = "unknown"
	}
	fmt.Fprintf(&b, "start type: %s\n", startType)
	if st.Running {
		fmt.Fprintf(&b, "running:    yes%s\n", pidText(st.PID))
	} else {
		fmt.Fprintf(&b, "running:    no (%s)\n", st.stateWord())
	}
	fmt.Fprintf(&b, "command:    %s\n", strings.Join(st.Command, " "))
	if cfgPath := configArg(st.Command); cfgPath != "" {
		if _, err := pipeline.LoadConfig(cfgPath); errors.Is(err, fs.ErrPermission) {
			fmt.Fprintf(&b, "config:     %s (not readable by this user)\n", cfgPath)
		} else if err != nil {
			fmt.Fprintf(&b, "config:     %s (does not load: %s)\n", cfgPath, cli.Flatten(err.Error()))
		} else {
			fmt.Fprintf(&b, "config:     %s\n", cfgPath)
		}
	} else {
		b.WriteString("config:     unknown (no --config in the command)\n")
	}
	if st.Logs != "" {
		fmt.Fprintf(&b, "logs:       %s\n", st.Logs)
	}
	return b.String()
}

// inspect reads the installed definition and asks the manager whether the
// service runs.
func (m *serviceManager) inspect() (*serviceState, error) {
	if m.platform == platformWindows {
		return inspectWindows(m.name)
	}
	st := &serviceState{Definition: definitionPath(m.platform, m.name), Logs: logsOf(m.platform, m.name)}
	if st.Definition == "" {
		// A manager whose files smtpq does not know (FreeBSD, Solaris,
		// AIX): kardianos alone answers.
		return m.inspectByKardianos(st)
	}
	text, err := os.ReadFile(st.Definition)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	st.Installed = true
	st.Command = commandFromDefinition(m.platform, string(text))
	switch m.platform {
	case platformSysV:
		st.StartType = sysvStartType(m.name, string(text))
		st.PID = sysvRunningPID(sysvPIDFile(m.name), st.Command)
		st.Running = st.PID != 0
		return st, nil
	case platformSystemd:
		return inspectSystemd(m.name, string(text), st)
	case platformUpstart:
		override, _ := os.ReadFile(upstartOverridePath(m.name))
		st.StartType = markedStartType(string(override))
	case platformOpenRC:
		conf, _ := os.ReadFile(openRCConfPath(m.name))
		st.StartType = markedStartType(string(conf))
		if st.StartType == string(startAuto) {
			if _, err := os.Stat("/etc/runlevels/default/" + m.name); err != nil {
				st.StartType = string(startManual)
			}
		}
	case platformLaunchd:
		st.StartType = string(startManual)
		if regexp.MustCompile(`<key>RunAtLoad</key>\s*<true/>`).Match(text) {
			st.StartType = string(startAuto)
		}
		if launchdDisabled(m.name) {
			st.StartType = string(startDisabled)
		}
	}
	return m.inspectByKardianos(st)
}

// inspectByKardianos asks kardianos whether the service runs. Where the
// definition file is unknown (st.Definition empty) it also says whether the
// service is installed.
func (m *serviceManager) inspectByKardianos(st *serviceState) (*serviceState, error) {
	s, err := m.kardianos(nil)
	if err != nil {
		return nil, err
	}
	known := st.Definition != ""
	status, err := s.Status()
	switch {
	case errors.Is(err, service.ErrNotInstalled):
		if st.Installed {
			st.State = "unknown to the service manager"
		}
		return st, nil
	case err != nil && !known:
		return nil, fmt.Errorf("asking %s about service %s: %w", m.platform, m.name, err)
	case err != nil:
		st.State = cli.Flatten(err.Error())
	case status == service.StatusRunning:
		st.Running = true
	}
	if !known {
		st.Installed = true
		st.Definition = "registered with " + m.platform
	}
	return st, nil
}

// checkServiceCanStart checks, as far as possible at install time, that the
// service will be able to start with cfg: when it runs as the installing
// user, that the pipeline can be set up (keys, password files); when it
// runs as another user, that this user owns the identity files (the
// service refuses others).
func checkServiceCanStart(cfg *pipeline.Config, user string) error {
	if user == "" || isCurrentUser(user) {
		if _, err := pipeline.New(cfg, pipeline.Options{}); err != nil {
			return fmt.Errorf("refusing to install: the service could not start with %s: %w", cfg.Path, cli.OneLine(err))
		}
		return nil
	}
	return checkOwnedBy(cfg, user)
}

// runUnderServiceManager runs serve, the pipeline, under the service
// manager's control: through kardianos' Run, which calls the program's
// Start, waits for the manager's stop request (Windows service control,
// SIGTERM or SIGINT elsewhere) and calls its Stop. "smtpq run" calls it
// when underServiceManager says so. It returns when the pipeline has
// stopped, with its error, or when Stop gave up waiting for it.
func runUnderServiceManager(serve func(context.Context) error, log *zap.Logger) error {
	name := os.Getenv(serviceEnv)
	if name == "" {
		name = defaultServiceName
	}
	prog := newServiceProgram(serve, serviceStopTimeout)
	s, err := service.New(prog, &service.Config{
		Name:   name,
		Option: service.KeyValue{"RunWait": prog.waitForStop},
	})
	if err != nil {
		return fmt.Errorf("service %s: %w", name, err)
	}
	log.Info("running under the service manager", zap.String("service", name), zap.String("manager", s.Platform()),
		zap.Duration("shutdown_grace", serviceShutdownGrace))
	prog.onEarlyExit = func() { stopSelf(s) }
	if err := s.Run(); err != nil {
		reportToSystemLog(s, err)
		return err
	}
	return nil
}

// underServiceManager reports whether "smtpq run" was started by a service
// manager: kardianos says so, or the installed service set serviceEnv.
func underServiceManager() bool {
	return os.Getenv(serviceEnv) != "" || !service.Interactive()
}

// serviceOptions returns the pipeline options for "smtpq run": under a
// service manager the shutdown grace fits in the manager's stop deadline.
func serviceOptions(opts pipeline.Options) pipeline.Options {
	if underServiceManager() {
		opts.ShutdownGrace = serviceShutdownGrace
	}
	return opts
}

// serviceProgram is smtpq's kardianos service.Interface. Start starts the
// pipeline in a goroutine that the program owns and returns at once; Stop
// cancels the pipeline's context and waits, at most stopTimeout, for its
// Run to return. Neither calls os.Exit. If the pipeline stops by itself (it
// could not open the spool), Done is closed, so that the service stops too
// instead of looking alive.
type serviceProgram struct {
	serve       func(context.Context) error
	stopTimeout time.Duration
	onEarlyExit func() // called once if serve returns before Stop; may be nil

	mu       sync.Mutex
	cancel   context.CancelFunc
	done     chan struct{} // closed when serve has returned
	err      error         // serve's result, set before done is closed
	stopping bool
}

func newServiceProgram(serve func(context.Context) error, stopTimeout time.Duration) *serviceProgram {
	return &serviceProgram{serve: serve, stopTimeout: stopTimeout, done: make(chan struct{})}
}

// Start implements service.Interface.
func (p *serviceProgram) Start(service.Service) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cancel != nil {
		return errors.New("smtpq service: already started")
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() {
		err := p.serve(ctx)
		p.mu.Lock()
		p.err = err
		early := !p.stopping
		onEarly := p.onEarlyExit
		p.mu.Unlock()
		close(p.done)
		if early && onEarly != nil {
			onEarly()
		}
	}()
	return nil
}

// Stop implements service.Interface.
func (p *serviceProgram) Stop(service.Service) error {
	p.mu.Lock()
	cancel := p.cancel
	p.stopping = true
	p.mu.Unlock()
	if cancel == nil {
		return nil // never started
	}
	cancel()
	t := time.NewTimer(p.stopTimeout)
	defer t.Stop()
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.err
	case <-t.C:
		return fmt.Errorf("smtpq service: the pipeline did not stop within %s", p.stopTimeout)
	}
}

// Done is closed when the pipeline has stopped.
func (p *serviceProgram) Done() <-chan struct{} { return p.done }

// waitForStop is kardianos' RunWait outside Windows: it returns on SIGTERM
// or SIGINT, or when the pipeline stopped by itself.
func (p *serviceProgram) waitForStop() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	select {
	case <-sig:
	case <-p.done:
	}
}

func nameArg(name string) string {
	if name == defaultServiceName {
		return ""
	}
	return " --name " + name
}

func pidText(pid int) string {
	if pid == 0 {
		return ""
	}
	return fmt.Sprintf(" (pid %d)", pid)
}
