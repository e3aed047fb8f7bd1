package localstack

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// ErrRunning is matched by a *RunningError: a stack already runs on the folder.
var ErrRunning = errors.New("a local stack already runs on this folder")

// RunningError says that another process holds the folder's stack, and where its services are.
type RunningError struct {
	Dir string
	// PID is the process holding the folder; NATSURL and MongoURI are its services' URLs,
	// empty when it did not start them (or has not written them yet).
	PID               int
	NATSURL, MongoURI string
}

func (e *RunningError) Error() string {
	return fmt.Sprintf("a local stack already runs on %s (process %d)", e.Dir, e.PID)
}

// Is makes errors.Is(err, ErrRunning) true.
func (e *RunningError) Is(target error) bool { return target == ErrRunning }

// lockFile and infoFile are kept in the stack's folder while a stack runs there.
const (
	lockFile = "stack.lock"
	infoFile = "stack.json"
)

type stackInfo struct {
	PID      int    `json:"pid"`
	NATSURL  string `json:"nats_url,omitempty"`
	MongoURI string `json:"mongo_uri,omitempty"`
}

// lockDir takes the folder's lock, which the kernel releases when the process ends however it
// ends; a second stack on the folder would open the same JetStream store and data files.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock local stack folder: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			re := &RunningError{Dir: dir}
			if b, rerr := os.ReadFile(filepath.Join(dir, infoFile)); rerr == nil {
				var info stackInfo
				if json.Unmarshal(b, &info) == nil {
					re.PID, re.NATSURL, re.MongoURI = info.PID, info.NATSURL, info.MongoURI
				}
			}
			return nil, re
		}
		return nil, fmt.Errorf("lock local stack folder: %w", err)
	}
	return f, nil
}

// writeInfo records the running stack's URLs for other processes that find the folder locked.
func (s *Stack) writeInfo(dir string) error {
	b, err := json.Marshal(stackInfo{PID: os.Getpid(), NATSURL: s.NATSURL, MongoURI: s.MongoURI})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, infoFile), b, 0o644); err != nil {
		return fmt.Errorf("record local stack: %w", err)
	}
	return nil
}
