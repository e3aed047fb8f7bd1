// Package localstack starts and stops the local services the pipeline needs when no URLs are
// configured, and that the end-to-end tests run against: nats-server with JetStream, PostgreSQL,
// and FerretDB serving the MongoDB wire protocol over it. Every service is a child process with
// its data and log under one folder.
package localstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Proc is one child process that can be stopped, killed and started again with the same
// command line, as the crash and restart tests need.
type Proc struct {
	// Name names the process in errors, such as nats-server.
	Name string
	// Path and Args are the command line.
	Path string
	Args []string
	// LogPath receives standard output and error, appended.
	LogPath string
	// Addr is the TCP address the process listens on; Start waits until it accepts.
	Addr string
	// Cred, when set, runs the process as another user (PostgreSQL refuses to run as root).
	Cred *syscall.Credential
	// Env is added to the environment of the process.
	Env []string

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
	exitCode int
	exited   bool
	maxRSS   int64
}

// Start starts the process and waits until its address accepts connections or ctx ends.
func (p *Proc) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("start %s: already running", p.Name)
	}
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	cmd := exec.Command(p.Path, p.Args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if p.Cred != nil {
		cmd.SysProcAttr.Credential = p.Cred
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	p.exited, p.exitCode = false, 0
	go func() {
		_ = cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.exited, p.exitCode = true, cmd.ProcessState.ExitCode()
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			p.maxRSS = ru.Maxrss * 1024
		}
		p.mu.Unlock()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	if p.Addr == "" {
		return nil
	}
	if err := waitListening(ctx, p.Addr, done); err != nil {
		return fmt.Errorf("start %s: %w (log: %s)", p.Name, err, p.LogPath)
	}
	return nil
}

// Pid returns the process id, or 0 when the process is not running.
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Wait waits for the process to exit and returns its exit status (-1 when a signal ended it).
func (p *Proc) Wait(ctx context.Context) (int, error) {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		code, _ := p.ExitCode()
		return code, nil
	}
	select {
	case <-done:
		code, _ := p.ExitCode()
		return code, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("wait for %s: %w", p.Name, ctx.Err())
	}
}

// MaxRSS returns the peak resident memory of the last run in bytes, known once it has ended.
func (p *Proc) MaxRSS() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.maxRSS
}

// ExitCode returns the exit status of the last run and whether that run has ended.
func (p *Proc) ExitCode() (int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitCode, p.exited
}

// Stop sends SIGTERM and waits up to grace for the process to exit, then kills it.
func (p *Proc) Stop(grace time.Duration) {
	p.signalAndWait(syscall.SIGTERM, grace)
}

// Kill ends the process at once with SIGKILL, as a crash would.
func (p *Proc) Kill() {
	p.signalAndWait(syscall.SIGKILL, 10*time.Second)
}

func (p *Proc) signalAndWait(sig syscall.Signal, grace time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-done
	}
	p.mu.Lock()
	p.cmd, p.done = nil, nil
	p.mu.Unlock()
}

// waitListening polls addr until it accepts a connection, the process exits, or ctx ends.
func waitListening(ctx context.Context, addr string, exited <-chan struct{}) error {
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	for {
		conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("process exited before it listened on " + addr)
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return errors.New("nothing listened on " + addr + " within 60s")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// FreeAddr returns a loopback address with a port that was free a moment ago.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// addrOrFree returns want when that address is free, otherwise a free one.
func addrOrFree(want string) (string, error) {
	if want != "" {
		if l, err := net.Listen("tcp", want); err == nil {
			l.Close()
			return want, nil
		}
	}
	return FreeAddr()
}

// FindBinary looks for a program in dir, then on PATH.
func FindBinary(dir, name string) (string, error) {
	if dir != "" {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found in %s or on PATH; run 'make tools'", name, dir)
}
