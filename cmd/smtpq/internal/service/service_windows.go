//go:build windows

package service

import (
	"errors"
	"fmt"
	"os/exec"
	"os/user"
	"strings"
	"unsafe"

	kardianos "github.com/kardianos/service"
	"golang.org/x/sys/windows"
	"golang.org/x/sys/windows/svc"
	"golang.org/x/sys/windows/svc/mgr"

	"github.com/smtpq/smtpq/pipeline"
)

// detach: Windows services are started by the service control manager,
// never as children of this process.
func detach(*exec.Cmd) {}

// privilegeProblem: the service control manager answers "Access is
// denied" itself; windowsHint adds the remedy.
func privilegeProblem() string { return "" }

func isCurrentUser(name string) bool {
	u, err := user.Current()
	return err == nil && strings.EqualFold(u.Username, name)
}

// checkOwnedBy: the key file checks of the service do not depend on the
// owner on Windows.
func checkOwnedBy(*pipeline.Config, string) error { return nil }

// inspectWindows asks the service control manager about the service, with
// the rights any user has (status does not need an elevated prompt).
func inspectWindows(name string) (*serviceState, error) {
	st := &serviceState{
		Definition: `HKLM\SYSTEM\CurrentControlSet\Services\` + name,
		Logs:       logsOf(platformWindows, name),
	}
	h, err := windows.OpenSCManager(nil, nil, windows.SC_MANAGER_CONNECT)
	if err != nil {
		return nil, fmt.Errorf("connecting to the service control manager: %w", err)
	}
	m := &mgr.Mgr{Handle: h}
	defer m.Disconnect()
	namep, err := windows.UTF16PtrFromString(name)
	if err != nil {
		return nil, err
	}
	sh, err := windows.OpenService(h, namep, windows.SERVICE_QUERY_CONFIG|windows.SERVICE_QUERY_STATUS)
	if errors.Is(err, windows.ERROR_SERVICE_DOES_NOT_EXIST) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", name, err)
	}
	s := &mgr.Service{Name: name, Handle: sh}
	defer s.Close()
	st.Installed = true
	binPath, startType, err := queryConfig(sh)
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", name, err)
	}
	if args, err := windows.DecomposeCommandLine(binPath); err == nil {
		st.Command = args
	} else {
		st.Command = []string{binPath}
	}
	switch startType {
	case mgr.StartAutomatic:
		st.StartType = string(StartAuto)
	case mgr.StartManual:
		st.StartType = string(StartManual)
	case mgr.StartDisabled:
		st.StartType = string(StartDisabled)
	}
	q, err := s.Query()
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", name, err)
	}
	switch q.State {
	case svc.Running:
		st.Running = true
		st.PID = int(q.ProcessId)
	case svc.Stopped:
	case svc.StartPending:
		st.State = "start pending"
	case svc.StopPending:
		st.State = "stop pending"
	case svc.Paused, svc.PausePending, svc.ContinuePending:
		st.State = "paused"
	}
	return st, nil
}

// queryConfig returns the service's command line and start type, from
// QueryServiceConfig alone. mgr.Service.Config would also ask
// QueryServiceConfig2 for the description, the delayed automatic start
// and the SID type, which status does not show; Wine's service manager
// answers the delayed-start level with ERROR_INVALID_LEVEL ("Invalid
// level"), so under Wine every install, start and status failed there.
func queryConfig(h windows.Handle) (binPath string, startType uint32, err error) {
	n := uint32(1024)
	for {
		b := make([]byte, n)
		p := (*windows.QUERY_SERVICE_CONFIG)(unsafe.Pointer(&b[0]))
		err := windows.QueryServiceConfig(h, p, n, &n)
		if err == nil {
			return windows.UTF16PtrToString(p.BinaryPathName), p.StartType, nil
		}
		if !errors.Is(err, windows.ERROR_INSUFFICIENT_BUFFER) || n <= uint32(len(b)) {
			return "", 0, err
		}
	}
}

// stopSelf asks the service control manager to stop this service, which
// calls Stop, when the pipeline stopped by itself: a Windows service's Run
// returns only on a control request.
func stopSelf(s kardianos.Service) {
	if kardianos.Interactive() {
		return
	}
	go func() { _ = s.Stop() }() // returns when the SCM has stopped the service, i.e. never in this process
}

// reportToSystemLog writes err to the Application event log: a Windows
// service has no stderr to read.
func reportToSystemLog(s kardianos.Service, err error) {
	if kardianos.Interactive() {
		return
	}
	if l, lerr := s.SystemLogger(nil); lerr == nil {
		_ = l.Error("smtpq: " + err.Error())
	}
}

// windowsHint adds the remedy for "Access is denied".
func windowsHint(err error) error {
	if errors.Is(err, windows.ERROR_ACCESS_DENIED) || (err != nil && strings.Contains(err.Error(), "Access is denied")) {
		return fmt.Errorf("%w (run it from an elevated prompt: Run as administrator)", err)
	}
	return err
}
