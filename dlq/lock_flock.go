//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package dlq

import (
	"errors"
	"os"
	"syscall"
)

// errWouldBlock reports that the lock is held by someone else.
var errWouldBlock = errors.New("lock held elsewhere")

// lockFile takes an exclusive, non-blocking flock on f. flock locks belong
// to the open file description, so two opens of the same file conflict
// even within one process.
func lockFile(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EWOULDBLOCK):
			return errWouldBlock
		default:
			return err
		}
	}
}

// unlockFile releases the lock taken by lockFile.
func unlockFile(f *os.File) error {
	return syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}
