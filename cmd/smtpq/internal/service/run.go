package service

// Running "smtpq run" under the service manager's control: what the
// installed service does, as opposed to what "smtpq service" does to it.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	kardianos "github.com/kardianos/service"
	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline"
)

// RunUnderManager runs serve, the pipeline, under the service
// manager's control: through kardianos' Run, which calls the program's
// Start, waits for the manager's stop request (Windows service control,
// SIGTERM or SIGINT elsewhere) and calls its Stop. "smtpq run" calls it
// when UnderManager says so. It returns when the pipeline has
// stopped, with its error, or when Stop gave up waiting for it.
func RunUnderManager(serve func(context.Context) error, log *zap.Logger) error {
	name := os.Getenv(serviceEnv)
	if name == "" {
		name = DefaultName
	}
	prog := newServiceProgram(serve, serviceStopTimeout)
	s, err := kardianos.New(prog, &kardianos.Config{
		Name:   name,
		Option: kardianos.KeyValue{"RunWait": prog.waitForStop},
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

// UnderManager reports whether "smtpq run" was started by a service
// manager: kardianos says so, or the installed service set serviceEnv.
func UnderManager() bool {
	return os.Getenv(serviceEnv) != "" || !kardianos.Interactive()
}

// PipelineOptions returns the pipeline options for "smtpq run": under a
// service manager the shutdown grace fits in the manager's stop deadline.
func PipelineOptions(opts pipeline.Options) pipeline.Options {
	if UnderManager() {
		opts.ShutdownGrace = serviceShutdownGrace
	}
	return opts
}

// serviceProgram is smtpq's kardianos.Interface. Start starts the
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

// Start implements kardianos.Interface.
func (p *serviceProgram) Start(kardianos.Service) error {
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

// Stop implements kardianos.Interface.
func (p *serviceProgram) Stop(kardianos.Service) error {
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
