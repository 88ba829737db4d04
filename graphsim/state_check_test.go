package graphsim_test

import (
	"crypto/tls"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// checkStateDir validates tenant.json and the files it names.
func checkStateDir(t *testing.T, dir, url string, apps int) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "tenant.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		TenantID string `json:"tenant_id"`
		GraphURL string `json:"graph_url"`
		LoginURL string `json:"login_url"`
		CAFile   string `json:"ca_file"`
		Apps     []struct {
			ClientID        string `json:"client_id"`
			DisplayName     string `json:"display_name"`
			OrganizationApp bool   `json:"organization_app"`
			CertFile        string `json:"cert_file"`
			KeyFile         string `json:"key_file"`
		} `json:"apps"`
		Users []struct {
			ID                string `json:"id"`
			UserPrincipalName string `json:"user_principal_name"`
			HasOneDrive       *bool  `json:"has_onedrive"`
		} `json:"users"`
		Sites []struct {
			ID     string `json:"id"`
			WebURL string `json:"web_url"`
			Name   string `json:"name"`
		} `json:"sites"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if st.TenantID == "" || st.GraphURL != url || st.LoginURL != url || len(st.Users) == 0 || len(st.Sites) == 0 {
		t.Fatalf("tenant.json %s", b)
	}
	if _, err := os.Stat(st.CAFile); err != nil {
		t.Fatalf("ca_file: %v", err)
	}
	if len(st.Apps) != apps || !st.Apps[0].OrganizationApp || st.Apps[1].OrganizationApp {
		t.Fatalf("apps %+v", st.Apps)
	}
	for _, a := range st.Apps {
		if _, err := tls.LoadX509KeyPair(a.CertFile, a.KeyFile); err != nil {
			t.Fatalf("app %s key pair: %v", a.ClientID, err)
		}
	}
	for _, u := range st.Users {
		if u.ID == "" || u.UserPrincipalName == "" || u.HasOneDrive == nil {
			t.Fatalf("user %+v", u)
		}
	}
	for _, x := range st.Sites {
		if x.ID == "" || x.WebURL == "" || x.Name == "" {
			t.Fatalf("site %+v", x)
		}
	}
}
