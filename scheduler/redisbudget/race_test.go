//go:build race

package redisbudget

// raceEnabled: the race detector slows every goroutine several times, so
// time-scaled tests run slower simulations to keep their margins.
const raceEnabled = true
