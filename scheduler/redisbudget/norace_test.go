//go:build !race

package redisbudget

const raceEnabled = false
