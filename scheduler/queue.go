package scheduler

import "time"

// waiter is a request waiting for a slot.
type waiter struct {
	job      string
	class    Class
	cost     int
	avoid    *appState // the app a transient failure came from
	since    time.Time
	deadline time.Time // clock time; zero if none

	done     chan struct{} // closed when g or err is set
	finished bool
	order    uint64 // when it was served, among all waiters
	g        grant
	err      error
}

// jobQueue is one job's waiters of one class, in arrival order.
type jobQueue struct {
	job string
	ws  []*waiter
}

// classQueue serves its jobs round-robin: one request of each job with
// waiters in turn, so a job with thousands of queued downloads delays a
// small job by at most one request per other job.
type classQueue struct {
	ring  []*jobQueue // jobs with waiters
	next  int         // ring index served next
	byJob map[string]*jobQueue
	n     int
}

func (q *classQueue) push(w *waiter, front bool) {
	if q.byJob == nil {
		q.byJob = map[string]*jobQueue{}
	}
	jq := q.byJob[w.job]
	if jq == nil {
		jq = &jobQueue{job: w.job}
		q.byJob[w.job] = jq
		q.ring = append(q.ring, jq)
	}
	if front {
		jq.ws = append(jq.ws, nil)
		copy(jq.ws[1:], jq.ws)
		jq.ws[0] = w
	} else {
		jq.ws = append(jq.ws, w)
	}
	q.n++
}

func (q *classQueue) peek() *waiter {
	if q.n == 0 {
		return nil
	}
	if q.next >= len(q.ring) {
		q.next = 0
	}
	return q.ring[q.next].ws[0]
}

// pop removes the waiter peek returned and moves on to the next job.
func (q *classQueue) pop() {
	jq := q.ring[q.next]
	jq.ws[0] = nil
	jq.ws = jq.ws[1:]
	q.n--
	if len(jq.ws) == 0 {
		q.dropJob(q.next)
		return // next now points at the following job
	}
	q.next++
}

func (q *classQueue) dropJob(i int) {
	delete(q.byJob, q.ring[i].job)
	copy(q.ring[i:], q.ring[i+1:])
	q.ring[len(q.ring)-1] = nil
	q.ring = q.ring[:len(q.ring)-1]
	if q.next > i {
		q.next--
	}
	if q.next >= len(q.ring) {
		q.next = 0
	}
}

// remove takes w out of the queue (its context ended).
func (q *classQueue) remove(w *waiter) bool {
	jq := q.byJob[w.job]
	if jq == nil {
		return false
	}
	for i, x := range jq.ws {
		if x != w {
			continue
		}
		copy(jq.ws[i:], jq.ws[i+1:])
		jq.ws[len(jq.ws)-1] = nil
		jq.ws = jq.ws[:len(jq.ws)-1]
		q.n--
		if len(jq.ws) == 0 {
			for r, x := range q.ring {
				if x == jq {
					q.dropJob(r)
					break
				}
			}
		}
		return true
	}
	return false
}
