package scheduler

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestCost(t *testing.T) {
	tests := []struct {
		method, path, query string
		class               Class
		ru                  int
	}{
		{"GET", "/drives/d1/items/i1", "", ClassMetadata, 1},
		{"GET", "/drives/d1/root", "", ClassMetadata, 1},
		{"GET", "/drives/d1/root:/Docs/a.docx:", "", ClassMetadata, 1},
		{"GET", "/drives/d1/root:/Docs:/children", "", ClassMetadata, 2},
		{"GET", "/drives/d1/items/i1/children", "$top=200", ClassMetadata, 2},
		{"GET", "/drives/d1/root/delta", "", ClassMetadata, 2},
		{"GET", "/drives/d1/root/delta", "token=abc&$top=200", ClassMetadata, 1},
		{"GET", "/drives/d1/root/delta(token='abc')", "", ClassMetadata, 1},
		{"GET", "/drives/d1/items/i1/content", "", ClassDownload, 1},
		{"GET", "/sites", "search=*", ClassMetadata, 2},
		{"GET", "/sites/getAllSites", "", ClassMetadata, 2},
		{"GET", "/sites/contoso.sharepoint.com,1,2", "", ClassMetadata, 1},
		{"GET", "/sites/s1/drives", "", ClassMetadata, 2},
		{"GET", "/sites/s1/lists", "", ClassMetadata, 2},
		{"GET", "/sites/s1/lists/l1", "", ClassMetadata, 1},
		{"GET", "/sites/s1/lists/l1/items", "$expand=fields", ClassMetadata, 2},
		{"GET", "/sites/s1/lists/l1/items/7", "", ClassMetadata, 1},
		{"GET", "/users/u1/drive", "", ClassMetadata, 1},
		{"GET", "/users/u1/drives", "", ClassMetadata, 2},
		{"GET", "/drives/d1/items/i1/permissions", "", ClassMetadata, 5},
		{"GET", "/drives/d1/items/i1", "$expand=permissions", ClassMetadata, 5},
		{"GET", "/drives/d1/root/children", "expand=Permissions", ClassMetadata, 5},
		{"POST", "/drives/d1/items/i1/children", "", ClassMetadata, 2},
		{"PATCH", "/drives/d1/items/i1", "", ClassMetadata, 2},
		{"DELETE", "/drives/d1/items/i1", "", ClassMetadata, 2},
		// Directory calls are not SharePoint traffic: SharePoint does not meter them.
		{"GET", "/users", "$top=100", ClassMetadata, 0},
		{"GET", "/users/u1", "", ClassMetadata, 0},
		{"GET", "/applications", "", ClassMetadata, 0},
		{"POST", "/applications", "", ClassMetadata, 0},
		{"GET", "/servicePrincipals(appId='x')", "", ClassMetadata, 0},
	}
	for _, tt := range tests {
		class, ru := Cost(tt.method, tt.path, tt.query)
		if class != tt.class || ru != tt.ru {
			t.Errorf("Cost(%s %s?%s) = %v, %d; want %v, %d", tt.method, tt.path, tt.query, class, ru, tt.class, tt.ru)
		}
	}
}

func TestBatchCost(t *testing.T) {
	tests := []struct {
		name, body string
		ru         int
	}{
		{"sum of sub-requests", `{"requests":[
			{"id":"1","method":"GET","url":"/drives/d1/items/i1"},
			{"id":"2","method":"GET","url":"drives/d1/root/children"},
			{"id":"3","method":"GET","url":"/drives/d1/items/i2?$expand=permissions"},
			{"id":"4","method":"GET","url":"/users/u1"}]}`, 1 + 2 + 5 + 0},
		{"absolute url", `{"requests":[{"id":"1","method":"GET","url":"https://graph.microsoft.com/v1.0/drives/d/root/delta"}]}`, 2},
		{"unreadable", `{"requests":`, maxBatchRequests},
		{"empty", `{"requests":[]}`, maxBatchRequests},
	}
	for _, tt := range tests {
		if got := batchCost([]byte(tt.body)); got != tt.ru {
			t.Errorf("%s: batchCost = %d, want %d", tt.name, got, tt.ru)
		}
	}
}

func TestPrepareClassifies(t *testing.T) {
	_, src := fakeApps("a")
	s, _, _ := newTest(t, Config{}, src)
	tests := []struct {
		method, url  string
		body         string
		graph, batch bool
		content      bool
		class        Class
		ru           int
	}{
		{"GET", graph + "/drives/d/items/i", "", true, false, false, ClassMetadata, 1},
		{"GET", graph + "/drives/d/items/i/content", "", true, false, true, ClassDownload, 2},
		{"GET", "https://graph.example/beta/drives/d/root/children", "", true, false, false, ClassMetadata, 2},
		{"GET", "https://contoso.sharepoint.com/_layouts/15/download.aspx?tempauth=secret", "", false, false, false, ClassDownload, 1},
		{"POST", graph + "/$batch", `{"requests":[{"id":"1","method":"GET","url":"/drives/d/items/i"},{"id":"2","method":"GET","url":"/drives/d/items/j/children"}]}`,
			true, true, false, ClassMetadata, 3},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest(tt.method, tt.url, strings.NewReader(tt.body))
		if tt.body == "" {
			req.Body = nil
		}
		rq, err := s.prepare(req)
		if err != nil {
			t.Fatal(err)
		}
		if rq.graph != tt.graph || rq.batch != tt.batch || rq.content != tt.content || rq.class != tt.class || rq.cost != tt.ru {
			t.Errorf("%s %s: graph %v batch %v content %v class %v cost %d; want %v %v %v %v %d", tt.method, tt.url,
				rq.graph, rq.batch, rq.content, rq.class, rq.cost, tt.graph, tt.batch, tt.content, tt.class, tt.ru)
		}
		if strings.Contains(rq.where, "secret") {
			t.Errorf("request description %q carries the query", rq.where)
		}
	}
}

func TestWindow(t *testing.T) {
	sec := int64(time.Second)
	w := newWindow(time.Second, 60)
	w.add(0, 10)
	w.add(500*int64(time.Millisecond), 5)
	w.add(30*sec, 20)
	if got := w.used(59 * sec); got != 35 {
		t.Fatalf("used at 59s = %d, want 35", got)
	}
	// Slot 0 leaves when slot 60 begins.
	if got := w.used(60 * sec); got != 20 {
		t.Fatalf("used at 60s = %d, want 20", got)
	}
	w2 := newWindow(time.Second, 60)
	w2.add(0, 10)
	w2.add(30*sec, 20)
	if d := w2.untilAtMost(45*sec, 20); d != 15*time.Second {
		t.Errorf("untilAtMost(20) = %v, want 15s (slot 0 leaves at 60s)", d)
	}
	if d := w2.untilAtMost(45*sec, 0); d != 45*time.Second {
		t.Errorf("untilAtMost(0) = %v, want 45s (slot 30 leaves at 90s)", d)
	}
	if d := w2.untilAtMost(45*sec, 30); d != 0 {
		t.Errorf("untilAtMost(30) = %v, want 0", d)
	}
	w2.refund(46*sec, 30*sec, 5)
	if got := w2.used(46 * sec); got != 25 {
		t.Errorf("after refund used = %d, want 25", got)
	}
	w2.refund(100*sec, 30*sec, 5) // slot already gone: nothing to take back
	if got := w2.used(100 * sec); got != 0 {
		t.Errorf("used after the window passed = %d, want 0", got)
	}
	// A gap longer than the window clears it.
	w2.add(200*sec, 7)
	if got := w2.used(200 * sec); got != 7 {
		t.Errorf("used after a long gap = %d, want 7", got)
	}
}

func TestFakeClock(t *testing.T) {
	c := NewFakeClock(t0)
	var fired []time.Duration
	c.AfterFunc(3*time.Second, func() { fired = append(fired, c.Now().Sub(t0)) })
	stop := c.AfterFunc(2*time.Second, func() { t.Error("stopped timer fired") })
	c.AfterFunc(time.Second, func() {
		fired = append(fired, c.Now().Sub(t0))
		// A timer set from a timer that falls due within the same Advance runs too.
		c.AfterFunc(time.Second, func() { fired = append(fired, c.Now().Sub(t0)) })
	})
	if !stop() {
		t.Fatal("stop of a pending timer reported false")
	}
	if stop() {
		t.Fatal("second stop reported true")
	}
	c.Advance(5 * time.Second)
	want := []time.Duration{time.Second, 2 * time.Second, 3 * time.Second}
	if len(fired) != len(want) {
		t.Fatalf("fired at %v, want %v", fired, want)
	}
	for i := range want {
		if fired[i] != want[i] {
			t.Fatalf("fired at %v, want %v", fired, want)
		}
	}
	if got := c.Now().Sub(t0); got != 5*time.Second {
		t.Fatalf("now = +%v, want +5s", got)
	}
}

func TestScaledClock(t *testing.T) {
	base := NewFakeClock(t0)
	c := Scaled(base, 60)
	base.Advance(time.Second)
	if got := c.Now().Sub(t0); got != time.Minute {
		t.Fatalf("scaled now = +%v, want +1m", got)
	}
	fired := false
	c.AfterFunc(30*time.Second, func() { fired = true })
	base.Advance(499 * time.Millisecond)
	if fired {
		t.Fatal("fired before 30 scaled seconds")
	}
	base.Advance(time.Millisecond)
	if !fired {
		t.Fatal("did not fire after 30 scaled seconds (0.5 s of base time)")
	}
	if got := scaleOf(Scaled(c, 2)); got != 120 {
		t.Fatalf("scale of a clock scaled twice = %v, want 120", got)
	}
}
