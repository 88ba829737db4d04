package graphsim_test

import (
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/backup-proxy/backup-proxy/graphsim"
)

// TestIssuedCredentials: with RecordCredentials the server remembers the
// assertions it received, the tokens it issued and the tempauth of every
// download URL it handed out; without it, nothing.
func TestIssuedCredentials(t *testing.T) {
	for _, record := range []bool{true, false} {
		o := small(graphsim.NewManualClock(t0))
		o.RecordCredentials = record
		s := start(t, o)
		app := appByOrg(s, false)
		jwt := goodAssertion(s, app, "PS256").sign(t)
		r := requestToken(t, s, s.Tenant().ID, app.ClientID, jwt, nil)
		if r.status != 200 {
			t.Fatalf("token: %d %v", r.status, r.body)
		}
		c := &client{t: t, s: s, http: s.HTTPClient(), token: r.body["access_token"].(string)}
		d := s.Tenant().Drives[0].ID
		f := biggestFile(t, s, d)
		dl := c.mustGet("/drives/" + d + "/items/" + f.ID)["@microsoft.graph.downloadUrl"].(string)
		u, err := url.Parse(dl)
		if err != nil {
			t.Fatal(err)
		}

		got := s.IssuedCredentials()
		if !record {
			if len(got.AccessTokens)+len(got.ClientAssertions)+len(got.TempAuths) != 0 {
				t.Errorf("recorded without RecordCredentials: %v", got)
			}
			continue
		}
		if !slices.Equal(got.ClientAssertions, []string{jwt}) || !slices.Equal(got.AccessTokens, []string{c.token}) ||
			!slices.Contains(got.TempAuths, u.Query().Get("tempauth")) {
			t.Errorf("recorded %d assertions, %d tokens, %d tempauths; want the one assertion, the one token and the tempauth of %s",
				len(got.ClientAssertions), len(got.AccessTokens), len(got.TempAuths), strings.SplitN(dl, "?", 2)[0])
		}
	}
}
