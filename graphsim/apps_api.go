package graphsim

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Directory endpoints for creating pool apps: applications (with
// keyCredentials), servicePrincipals and appRoleAssignments (admin consent).
// SharePoint does not meter them (cost 0).

type keyCredentialJSON struct {
	CustomKeyIdentifier *string `json:"customKeyIdentifier"`
	DisplayName         string  `json:"displayName,omitempty"`
	EndDateTime         string  `json:"endDateTime,omitempty"`
	Key                 *string `json:"key"`
	KeyID               string  `json:"keyId,omitempty"`
	StartDateTime       string  `json:"startDateTime,omitempty"`
	Type                string  `json:"type"`
	Usage               string  `json:"usage"`
}

type resourceAccessJSON struct {
	ResourceAppID  string `json:"resourceAppId"`
	ResourceAccess []struct {
		ID   string `json:"id"`
		Type string `json:"type"`
	} `json:"resourceAccess"`
}

type applicationJSON struct {
	ODataContext           string               `json:"@odata.context,omitempty"`
	ID                     string               `json:"id"`
	AppID                  string               `json:"appId"`
	DisplayName            string               `json:"displayName"`
	CreatedDateTime        string               `json:"createdDateTime"`
	SignInAudience         string               `json:"signInAudience"`
	KeyCredentials         []keyCredentialJSON  `json:"keyCredentials"`
	PasswordCredentials    []any                `json:"passwordCredentials"`
	RequiredResourceAccess []resourceAccessJSON `json:"requiredResourceAccess"`
}

type appRoleJSON struct {
	AllowedMemberTypes []string `json:"allowedMemberTypes"`
	Description        string   `json:"description"`
	DisplayName        string   `json:"displayName"`
	ID                 string   `json:"id"`
	IsEnabled          bool     `json:"isEnabled"`
	Origin             string   `json:"origin"`
	Value              string   `json:"value"`
}

type servicePrincipalJSON struct {
	ODataContext           string        `json:"@odata.context,omitempty"`
	ID                     string        `json:"id"`
	AppID                  string        `json:"appId"`
	DisplayName            string        `json:"displayName"`
	AccountEnabled         bool          `json:"accountEnabled"`
	ServicePrincipalType   string        `json:"servicePrincipalType"`
	AppOwnerOrganizationID string        `json:"appOwnerOrganizationId"`
	AppRoles               []appRoleJSON `json:"appRoles"`
}

type appRoleAssignmentJSON struct {
	ODataContext         string `json:"@odata.context,omitempty"`
	ID                   string `json:"id"`
	AppRoleID            string `json:"appRoleId"`
	CreatedDateTime      string `json:"createdDateTime"`
	PrincipalDisplayName string `json:"principalDisplayName"`
	PrincipalID          string `json:"principalId"`
	PrincipalType        string `json:"principalType"`
	ResourceDisplayName  string `json:"resourceDisplayName"`
	ResourceID           string `json:"resourceId"`
}

func (s *Server) renderApplication(a *application) applicationJSON {
	j := applicationJSON{ID: a.objectID, AppID: a.clientID, DisplayName: a.displayName, CreatedDateTime: ts(a.created),
		SignInAudience: "AzureADMyOrg", KeyCredentials: []keyCredentialJSON{}, PasswordCredentials: []any{},
		RequiredResourceAccess: a.requiredResourceAccess}
	if j.RequiredResourceAccess == nil {
		j.RequiredResourceAccess = []resourceAccessJSON{}
	}
	for _, k := range a.keys {
		thumb := base64.StdEncoding.EncodeToString(k.sha1[:])
		j.KeyCredentials = append(j.KeyCredentials, keyCredentialJSON{CustomKeyIdentifier: &thumb,
			DisplayName: k.displayName, EndDateTime: ts(k.end), KeyID: k.keyID, StartDateTime: ts(k.start),
			Type: "AsymmetricX509Cert", Usage: "Verify"})
	}
	return j
}

func (s *Server) renderSP(sp *servicePrincipal) servicePrincipalJSON {
	j := servicePrincipalJSON{ID: sp.id, AppID: sp.appID, DisplayName: sp.displayName, AccountEnabled: true,
		ServicePrincipalType: "Application", AppOwnerOrganizationID: s.tenant.id, AppRoles: []appRoleJSON{}}
	if sp.appID == graphAppID {
		for _, r := range graphAppRoles {
			j.AppRoles = append(j.AppRoles, appRoleJSON{AllowedMemberTypes: []string{"Application"},
				Description: r.value, DisplayName: r.value, ID: r.id, IsEnabled: true, Origin: "Application", Value: r.value})
		}
		j.AppOwnerOrganizationID = "f8cdef31-a31e-4b4a-93e4-5f571e91255a"
	}
	return j
}

func (s *Server) renderAssignment(a appRoleAssignment) appRoleAssignmentJSON {
	return appRoleAssignmentJSON{ID: a.id, AppRoleID: a.appRoleID, CreatedDateTime: ts(a.created),
		PrincipalDisplayName: a.principalName, PrincipalID: a.principalID, PrincipalType: "ServicePrincipal",
		ResourceDisplayName: "Microsoft Graph", ResourceID: a.resourceID}
}

// keyFromSegment extracts "x" from "applications(appId='x')".
func keyFromSegment(seg, prefix string) (string, bool) {
	inner, ok := strings.CutPrefix(seg, prefix+"(")
	if !ok {
		return "", false
	}
	inner = strings.TrimSuffix(inner, ")")
	_, v, ok := strings.Cut(inner, "=")
	if !ok {
		return "", false
	}
	return strings.ToLower(strings.Trim(v, "'")), true
}

// filterEq parses "$filter=appId eq 'x'" (or displayName).
func filterEq(filter string) (field, value string, ok bool) {
	f := strings.Fields(filter)
	if len(f) != 3 || !strings.EqualFold(f[1], "eq") {
		return "", "", false
	}
	return f[0], strings.Trim(f[2], "'"), true
}

func (s *Server) routeApplications(c *call, segs []string) route {
	dirErr := func(status int, code, msg string) route {
		return route{cost: 0, roles: manageApps, run: func(c *call) { c.fail(status, code, msg) }}
	}
	var key string
	byAppID := false
	switch {
	case segs[0] == "applications" && len(segs) == 1:
		switch c.r.Method {
		case http.MethodGet:
			return route{cost: 0, roles: manageApps, run: s.listApplications}
		case http.MethodPost:
			return route{cost: 0, roles: manageApps, run: s.createApplication}
		}
		return methodNotAllowed(0)
	case segs[0] == "applications" && len(segs) == 2:
		key = strings.ToLower(segs[1])
	default:
		k, ok := keyFromSegment(segs[0], "applications")
		if !ok || len(segs) != 1 {
			return dirErr(400, "Request_BadRequest", "Invalid object identifier '"+segs[0]+"'.")
		}
		key, byAppID = k, true
	}
	return route{cost: 0, roles: manageApps, run: func(c *call) {
		s.dir.mu.Lock()
		defer s.dir.mu.Unlock()
		a := s.dir.byObjectID[key]
		if byAppID {
			a = s.dir.byClientID[key]
		}
		if a == nil {
			c.fail(404, "Request_ResourceNotFound", fmt.Sprintf("Resource '%s' does not exist or one of its queried reference-property objects are not present.", key))
			return
		}
		switch c.r.Method {
		case http.MethodGet:
			j := s.renderApplication(a)
			j.ODataContext = s.metadata("applications/$entity")
			c.ok(200, j)
		case http.MethodPatch:
			s.patchApplication(c, a)
		case http.MethodDelete:
			s.dir.remove(a)
			c.w.WriteHeader(http.StatusNoContent)
		default:
			c.fail(405, "Request_BadRequest", "Method not allowed.")
		}
	}}
}

func (s *Server) listApplications(c *call) {
	s.dir.mu.RLock()
	var out []applicationJSON
	field, value, filtered := filterEq(c.q.Get("$filter"))
	for _, a := range s.dir.apps {
		if filtered && !(strings.EqualFold(field, "appId") && strings.EqualFold(a.clientID, value) ||
			strings.EqualFold(field, "displayName") && a.displayName == value) {
			continue
		}
		out = append(out, s.renderApplication(a))
	}
	s.dir.mu.RUnlock()
	from, to, next := s.page(c, len(out), 100, 999)
	c.ok(200, collection[applicationJSON]{ODataContext: s.metadata("applications"), ODataNextLink: next,
		Value: append([]applicationJSON{}, out[from:to]...)})
}

type applicationBody struct {
	DisplayName            *string               `json:"displayName"`
	KeyCredentials         *[]keyCredentialJSON  `json:"keyCredentials"`
	RequiredResourceAccess *[]resourceAccessJSON `json:"requiredResourceAccess"`
}

func readBody(c *call, v any) bool {
	b, err := io.ReadAll(io.LimitReader(c.r.Body, 4<<20))
	if err == nil {
		err = json.Unmarshal(b, v)
	}
	if err != nil {
		c.fail(400, "BadRequest", "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.")
		return false
	}
	return true
}

// parseKeyCredentials validates keyCredentials: certificates given as base64
// DER (Graph's Edm.Binary) or base64 of PEM. Entries without key that name an
// existing keyId keep that key.
func (s *Server) parseKeyCredentials(in []keyCredentialJSON, existing []keyCredential) ([]keyCredential, string) {
	var out []keyCredential
	for _, k := range in {
		if k.Key == nil || *k.Key == "" {
			found := false
			for _, e := range existing {
				if strings.EqualFold(e.keyID, k.KeyID) {
					out = append(out, e)
					found = true
				}
			}
			if !found {
				return nil, "Key credential 'key' property is required for new keys."
			}
			continue
		}
		if k.Type != "AsymmetricX509Cert" || k.Usage != "Verify" {
			return nil, "Only keyCredentials of type 'AsymmetricX509Cert' with usage 'Verify' are supported."
		}
		raw, err := base64.StdEncoding.DecodeString(*k.Key)
		if err != nil {
			return nil, "Key credential 'key' is not valid base64."
		}
		if blk, _ := pem.Decode(raw); blk != nil {
			raw = blk.Bytes
		}
		cert, err := x509.ParseCertificate(raw)
		if err != nil {
			return nil, "Key credential 'key' is not a valid X.509 certificate."
		}
		start, end := cert.NotBefore, cert.NotAfter
		if t, err := time.Parse(time.RFC3339, k.StartDateTime); err == nil {
			start = t
		}
		if t, err := time.Parse(time.RFC3339, k.EndDateTime); err == nil {
			if t.After(cert.NotAfter.Add(time.Minute)) {
				return nil, "Key credential end date is invalid: it must not be later than the certificate's expiry."
			}
			end = t
		}
		kid := k.KeyID
		if kid == "" {
			s.rngMu.Lock()
			kid = newGUID(s.rng)
			s.rngMu.Unlock()
		}
		out = append(out, keyCredential{keyID: kid, displayName: k.DisplayName, cert: cert,
			sha1: sha1Thumbprint(cert.Raw), sha256: sha256Thumbprint(cert.Raw), start: start, end: end})
	}
	return out, ""
}

func (s *Server) createApplication(c *call) {
	var body applicationBody
	if !readBody(c, &body) {
		return
	}
	if body.DisplayName == nil || *body.DisplayName == "" {
		c.fail(400, "Request_BadRequest", "Property 'displayName' is required.")
		return
	}
	var keys []keyCredential
	if body.KeyCredentials != nil {
		var msg string
		if keys, msg = s.parseKeyCredentials(*body.KeyCredentials, nil); msg != "" {
			c.fail(400, "Request_BadRequest", msg)
			return
		}
	}
	s.dir.mu.Lock()
	a := s.dir.register(*body.DisplayName, false, s.clock.Now(), nil)
	a.keys = keys
	if body.RequiredResourceAccess != nil {
		a.requiredResourceAccess = *body.RequiredResourceAccess
	}
	j := s.renderApplication(a)
	s.dir.mu.Unlock()
	s.stats.app(a.clientID)
	j.ODataContext = s.metadata("applications/$entity")
	c.w.Header().Set("Location", s.baseURL+"/v1.0/applications/"+a.objectID)
	c.ok(201, j)
}

// patchApplication runs with s.dir.mu held.
func (s *Server) patchApplication(c *call, a *application) {
	var body applicationBody
	if !readBody(c, &body) {
		return
	}
	if body.KeyCredentials != nil {
		keys, msg := s.parseKeyCredentials(*body.KeyCredentials, a.keys)
		if msg != "" {
			c.fail(400, "Request_BadRequest", msg)
			return
		}
		a.keys = keys
	}
	if body.DisplayName != nil {
		a.displayName = *body.DisplayName
	}
	if body.RequiredResourceAccess != nil {
		a.requiredResourceAccess = *body.RequiredResourceAccess
	}
	c.w.WriteHeader(http.StatusNoContent)
}

func (s *Server) routeServicePrincipals(c *call, segs []string) route {
	if segs[0] == "servicePrincipals" && len(segs) == 1 {
		switch c.r.Method {
		case http.MethodGet:
			return route{cost: 0, roles: manageApps, run: s.listServicePrincipals}
		case http.MethodPost:
			return route{cost: 0, roles: manageApps, run: s.createServicePrincipal}
		}
		return methodNotAllowed(0)
	}
	var key string
	byAppID := false
	rest := segs[1:]
	if segs[0] == "servicePrincipals" {
		key, rest = strings.ToLower(segs[1]), segs[2:]
	} else if k, ok := keyFromSegment(segs[0], "servicePrincipals"); ok {
		key, byAppID = k, true
	} else {
		return route{cost: 0, run: func(c *call) { c.fail(400, "Request_BadRequest", "Invalid object identifier '"+segs[0]+"'.") }}
	}
	roles := manageApps
	if len(rest) == 1 && (rest[0] == "appRoleAssignments" || rest[0] == "appRoleAssignedTo") {
		roles = assignRoles
	}
	return route{cost: 0, roles: roles, run: func(c *call) {
		s.dir.mu.Lock()
		defer s.dir.mu.Unlock()
		var sp *servicePrincipal
		for _, x := range s.dir.sps {
			if !byAppID && x.id == key || byAppID && x.appID == key {
				sp = x
			}
		}
		if sp == nil {
			c.fail(404, "Request_ResourceNotFound", fmt.Sprintf("Resource '%s' does not exist or one of its queried reference-property objects are not present.", key))
			return
		}
		switch {
		case len(rest) == 0 && c.r.Method == http.MethodGet:
			j := s.renderSP(sp)
			j.ODataContext = s.metadata("servicePrincipals/$entity")
			c.ok(200, j)
		case len(rest) == 1 && rest[0] == "appRoleAssignments" && c.r.Method == http.MethodGet:
			out := collection[appRoleAssignmentJSON]{ODataContext: s.metadata("servicePrincipals('" + sp.id + "')/appRoleAssignments"), Value: []appRoleAssignmentJSON{}}
			for _, as := range sp.assignments {
				out.Value = append(out.Value, s.renderAssignment(as))
			}
			c.ok(200, out)
		case len(rest) == 1 && (rest[0] == "appRoleAssignments" || rest[0] == "appRoleAssignedTo") && c.r.Method == http.MethodPost:
			s.createAssignment(c, sp, rest[0] == "appRoleAssignedTo")
		default:
			c.fail(400, "Request_BadRequest", "Unsupported servicePrincipals request.")
		}
	}}
}

func (s *Server) listServicePrincipals(c *call) {
	s.dir.mu.RLock()
	field, value, filtered := filterEq(c.q.Get("$filter"))
	var out []servicePrincipalJSON
	all := append([]*servicePrincipal{s.dir.graphSP}, nil...)
	for _, a := range s.dir.apps {
		if a.sp != nil {
			all = append(all, a.sp)
		}
	}
	for _, sp := range all {
		if filtered && !(strings.EqualFold(field, "appId") && strings.EqualFold(sp.appID, value) ||
			strings.EqualFold(field, "displayName") && sp.displayName == value) {
			continue
		}
		out = append(out, s.renderSP(sp))
	}
	s.dir.mu.RUnlock()
	from, to, next := s.page(c, len(out), 100, 999)
	c.ok(200, collection[servicePrincipalJSON]{ODataContext: s.metadata("servicePrincipals"), ODataNextLink: next,
		Value: append([]servicePrincipalJSON{}, out[from:to]...)})
}

func (s *Server) createServicePrincipal(c *call) {
	var body struct {
		AppID string `json:"appId"`
	}
	if !readBody(c, &body) {
		return
	}
	s.dir.mu.Lock()
	defer s.dir.mu.Unlock()
	a := s.dir.byClientID[strings.ToLower(body.AppID)]
	if a == nil {
		c.fail(400, "Request_BadRequest", fmt.Sprintf("The appId '%s' of the service principal does not reference a valid application object.", body.AppID))
		return
	}
	if a.sp != nil {
		c.fail(409, "Request_MultipleObjectsWithSameKeyValue", "The service principal cannot be created, updated, or restored because the service principal name "+a.clientID+" is already in use.")
		return
	}
	sp := s.dir.addServicePrincipal(a, s.clock.Now())
	j := s.renderSP(sp)
	j.ODataContext = s.metadata("servicePrincipals/$entity")
	c.ok(201, j)
}

// createAssignment grants a Graph app role (admin consent). The path names
// the principal (appRoleAssignments) or the resource (appRoleAssignedTo).
// Runs with s.dir.mu held.
func (s *Server) createAssignment(c *call, pathSP *servicePrincipal, assignedTo bool) {
	var body struct {
		PrincipalID string `json:"principalId"`
		ResourceID  string `json:"resourceId"`
		AppRoleID   string `json:"appRoleId"`
	}
	if !readBody(c, &body) {
		return
	}
	principal := s.dir.sps[strings.ToLower(body.PrincipalID)]
	switch {
	case principal == nil:
		c.fail(400, "Request_BadRequest", "Invalid principalId.")
		return
	case !assignedTo && principal != pathSP, assignedTo && pathSP != s.dir.graphSP:
		c.fail(400, "Request_BadRequest", "The principalId/resourceId do not match the service principal in the URL.")
		return
	case !strings.EqualFold(body.ResourceID, s.dir.graphSP.id):
		c.fail(400, "Request_BadRequest", "Invalid resourceId: graphsim only knows Microsoft Graph's service principal.")
		return
	case roleValue(body.AppRoleID) == "":
		c.fail(400, "Request_BadRequest", "Permission being assigned was not found on application '"+graphAppID+"'.")
		return
	}
	as := s.dir.assign(principal, strings.ToLower(body.AppRoleID), s.clock.Now())
	j := s.renderAssignment(as)
	j.ODataContext = s.metadata("servicePrincipals('" + pathSP.id + "')/appRoleAssignments/$entity")
	c.ok(201, j)
}
