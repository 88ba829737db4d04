package graphsim

import (
	"crypto/x509"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"
)

// Microsoft Graph's application id and the app roles graphsim knows, with
// their real ids so clients that hard-code them work.
const graphAppID = "00000003-0000-0000-c000-000000000000"

var graphAppRoles = []struct{ id, value string }{
	{"332a536c-c7ef-4017-ab91-336970924f0d", "Sites.Read.All"},
	{"9492366f-7969-46a4-8d15-ed1a20078fff", "Sites.ReadWrite.All"},
	{"a82116e5-55eb-4c41-a434-62fe8a61c773", "Sites.FullControl.All"},
	{"883ea226-0bf2-4a8f-9f9d-92c9162a727d", "Sites.Selected"},
	{"01d4889c-1287-42c6-ac1f-5d1e02578ef6", "Files.Read.All"},
	{"df021288-bdef-4463-88db-98f22de89214", "User.Read.All"},
	{"1bfefb4e-e0b5-418b-a88f-73c46d2cc8e9", "Application.ReadWrite.All"},
	{"18a4783c-866b-4cc7-a460-3d5e5662c884", "Application.ReadWrite.OwnedBy"},
	{"06b708a9-e830-4db3-a914-8e69da51d44f", "AppRoleAssignment.ReadWrite.All"},
}

func roleValue(id string) string {
	for _, r := range graphAppRoles {
		if strings.EqualFold(r.id, id) {
			return r.value
		}
	}
	return ""
}

var (
	backupRoles = []string{"Sites.Read.All", "Files.Read.All", "User.Read.All"}
	orgRoles    = []string{"Sites.Read.All", "Sites.FullControl.All", "Files.Read.All", "User.Read.All",
		"Application.ReadWrite.All", "AppRoleAssignment.ReadWrite.All"}
)

// keyCredential is a certificate registered on an application.
type keyCredential struct {
	keyID       string
	displayName string
	cert        *x509.Certificate
	sha1        [20]byte
	sha256      [32]byte
	start, end  time.Time
}

type application struct {
	objectID, clientID, displayName string
	organization                    bool
	created                         time.Time
	keys                            []keyCredential
	requiredResourceAccess          []resourceAccessJSON
	sp                              *servicePrincipal
}

type servicePrincipal struct {
	id, appID, displayName string
	created                time.Time
	assignments            []appRoleAssignment
}

type appRoleAssignment struct {
	id, principalID, resourceID, appRoleID string
	principalName                          string
	created                                time.Time
}

// directory holds the tenant's app registrations and service principals.
type directory struct {
	mu         sync.RWMutex
	rng        *rand.Rand
	apps       []*application // registration order
	byClientID map[string]*application
	byObjectID map[string]*application
	sps        map[string]*servicePrincipal // by object id
	graphSP    *servicePrincipal
}

func newDirectory(seed uint64) *directory {
	d := &directory{
		rng:        rand.New(rand.NewPCG(seed, 0x6469726563746f72)),
		byClientID: map[string]*application{},
		byObjectID: map[string]*application{},
		sps:        map[string]*servicePrincipal{},
	}
	d.graphSP = &servicePrincipal{id: newGUID(d.rng), appID: graphAppID, displayName: "Microsoft Graph", created: contentEpoch}
	d.sps[d.graphSP.id] = d.graphSP
	return d
}

// register adds an application (and, if consent is given, its service
// principal with the roles granted). Callers hold d.mu.
func (d *directory) register(name string, organization bool, now time.Time, roles []string) *application {
	a := &application{objectID: newGUID(d.rng), clientID: newGUID(d.rng), displayName: name,
		organization: organization, created: now}
	d.apps = append(d.apps, a)
	d.byClientID[a.clientID] = a
	d.byObjectID[a.objectID] = a
	if roles != nil {
		sp := d.addServicePrincipal(a, now)
		for _, role := range roles {
			for _, r := range graphAppRoles {
				if r.value == role {
					d.assign(sp, r.id, now)
				}
			}
		}
	}
	return a
}

func (d *directory) addServicePrincipal(a *application, now time.Time) *servicePrincipal {
	sp := &servicePrincipal{id: newGUID(d.rng), appID: a.clientID, displayName: a.displayName, created: now}
	a.sp = sp
	d.sps[sp.id] = sp
	return sp
}

func (d *directory) assign(sp *servicePrincipal, roleID string, now time.Time) appRoleAssignment {
	as := appRoleAssignment{id: newGUID(d.rng), principalID: sp.id, resourceID: d.graphSP.id,
		appRoleID: roleID, principalName: sp.displayName, created: now}
	sp.assignments = append(sp.assignments, as)
	return as
}

func (d *directory) remove(a *application) {
	delete(d.byClientID, a.clientID)
	delete(d.byObjectID, a.objectID)
	if a.sp != nil {
		delete(d.sps, a.sp.id)
	}
	for i, x := range d.apps {
		if x == a {
			d.apps = append(d.apps[:i:i], d.apps[i+1:]...)
			break
		}
	}
}

// roles returns the Graph app roles granted to an app's service principal.
func (d *directory) roles(a *application) []string {
	if a.sp == nil {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, as := range a.sp.assignments {
		if v := roleValue(as.appRoleID); v != "" && !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	sort.Strings(out)
	return out
}

func (d *directory) addKey(a *application, cert *x509.Certificate, name string, start, end time.Time) keyCredential {
	k := keyCredential{keyID: newGUID(d.rng), displayName: name, cert: cert,
		sha1: sha1Thumbprint(cert.Raw), sha256: sha256Thumbprint(cert.Raw), start: start, end: end}
	a.keys = append(a.keys, k)
	return k
}
