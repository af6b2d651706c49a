// Package bench holds Sluice's benchmarks: the same three-stage pipeline written by hand,
// with Sluice, and with peer libraries, so that their costs per item can be compared.
//
// Everything is in the _test.go files; see README.md for what each benchmark measures and
// run.sh for how the published numbers are produced. This is a separate module so that the
// peer libraries never become dependencies of Sluice itself.
package bench
