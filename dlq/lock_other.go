//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package dlq

import (
	"errors"
	"fmt"
	"os"
	"runtime"
)

// errWouldBlock reports that the lock is held by someone else.
var errWouldBlock = errors.New("lock held elsewhere")

// lockFile is not implemented on this platform: the File sink refuses to
// open rather than risk two writers.
func lockFile(*os.File) error {
	return fmt.Errorf("file locking is not supported on %s", runtime.GOOS)
}

func unlockFile(*os.File) error { return nil }
