package scheduler

import "time"

// window is a sliding window of RU charges kept in fixed slots, the way
// SharePoint (and graphsim) meter them: usage is the sum of the slots that
// overlap the window. The scheduler's windows have one slot more than the
// server's (61 one-second slots for a minute): our slot boundaries are not
// the server's and requests reach it a little after we count them, so the
// extra slot keeps our count at or above the server's. Times are
// nanoseconds since the scheduler's epoch.
type window struct {
	slot  int64 // slot length in ns
	slots []int64
	cur   int64 // absolute index of the newest slot
	sum   int64
}

func newWindow(slot time.Duration, n int) *window {
	return &window{slot: int64(slot), slots: make([]int64, n)}
}

// span is the time the window covers.
func (w *window) span() time.Duration { return time.Duration(w.slot * int64(len(w.slots))) }

func (w *window) advance(ns int64) {
	abs := ns / w.slot
	if abs <= w.cur {
		return
	}
	n := int64(len(w.slots))
	if abs-w.cur >= n {
		clear(w.slots)
		w.sum = 0
	} else {
		for i := w.cur + 1; i <= abs; i++ {
			w.sum -= w.slots[i%n]
			w.slots[i%n] = 0
		}
	}
	w.cur = abs
}

func (w *window) add(ns, ru int64) {
	w.advance(ns)
	w.slots[w.cur%int64(len(w.slots))] += ru
	w.sum += ru
}

// refund takes back ru charged at time at, if that slot is still counted.
func (w *window) refund(now, at, ru int64) {
	w.advance(now)
	i := at / w.slot
	n := int64(len(w.slots))
	if i > w.cur || i <= w.cur-n {
		return
	}
	r := min(ru, w.slots[i%n])
	w.slots[i%n] -= r
	w.sum -= r
}

func (w *window) used(ns int64) int64 {
	w.advance(ns)
	return w.sum
}

// untilAtMost returns how long until usage drops to target or below if
// nothing more is charged (a negative target means "until empty").
func (w *window) untilAtMost(ns, target int64) time.Duration {
	w.advance(ns)
	if w.sum <= target {
		return 0
	}
	n := int64(len(w.slots))
	sum := w.sum
	for i := w.cur - n + 1; i <= w.cur; i++ {
		if i >= 0 {
			sum -= w.slots[i%n]
		}
		if sum <= target {
			// Slot i leaves the window when slot i+n begins.
			return time.Duration((i+n)*w.slot - ns)
		}
	}
	return time.Duration((w.cur+n)*w.slot - ns)
}
