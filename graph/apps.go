package graph

import (
	"context"
	"crypto/x509"
	"fmt"

	"github.com/google/uuid"
	"github.com/microsoftgraph/msgraph-sdk-go/models"
	"github.com/microsoftgraph/msgraph-sdk-go/serviceprincipals"
)

// graphAppID is Microsoft Graph's application id, the same in every tenant.
const graphAppID = "00000003-0000-0000-c000-000000000000"

// BackupRoles are the application permissions a backup app needs: read every
// site and drive, and resolve OneDrive owners.
var BackupRoles = []string{"Sites.Read.All", "User.Read.All"}

// RegisterApplication registers a new application in Entra with cert as its
// only credential, creates its service principal and grants it BackupRoles
// (admin consent). The client must be authenticated as an app allowed to do
// so (Application.ReadWrite.All and AppRoleAssignment.ReadWrite.All): the
// tenant's organization app. It returns the new application (client) id.
func (c *Client) RegisterApplication(ctx context.Context, displayName string, cert *x509.Certificate) (string, error) {
	graphSP, roleIDs, err := c.graphServicePrincipal(ctx)
	if err != nil {
		return "", err
	}

	kc := models.NewKeyCredential()
	kc.SetTypeEscaped(ptr("AsymmetricX509Cert"))
	kc.SetUsage(ptr("Verify"))
	kc.SetKey(cert.Raw)
	kc.SetDisplayName(ptr("CN=" + cert.Subject.CommonName))
	access := models.NewRequiredResourceAccess()
	access.SetResourceAppId(ptr(graphAppID))
	var ras []models.ResourceAccessable
	for _, id := range roleIDs {
		ra := models.NewResourceAccess()
		ra.SetId(&id)
		ra.SetTypeEscaped(ptr("Role"))
		ras = append(ras, ra)
	}
	access.SetResourceAccess(ras)
	app := models.NewApplication()
	app.SetDisplayName(ptr(displayName))
	app.SetSignInAudience(ptr("AzureADMyOrg"))
	app.SetKeyCredentials([]models.KeyCredentialable{kc})
	app.SetRequiredResourceAccess([]models.RequiredResourceAccessable{access})
	created, err := sdkCall("register application", func() (models.Applicationable, error) { return c.sdk.Applications().Post(ctx, app, nil) })
	if err != nil {
		return "", fmt.Errorf("register application %q: %w", displayName, mapError(err))
	}
	appID := deref(created.GetAppId())

	sp := models.NewServicePrincipal()
	sp.SetAppId(&appID)
	newSP, err := sdkCall("service principal", func() (models.ServicePrincipalable, error) { return c.sdk.ServicePrincipals().Post(ctx, sp, nil) })
	if err != nil {
		return "", fmt.Errorf("service principal of %s: %w", appID, mapError(err))
	}
	principal, err := uuid.Parse(deref(newSP.GetId()))
	if err != nil {
		return "", fmt.Errorf("service principal of %s: id %q: %w", appID, deref(newSP.GetId()), err)
	}
	for _, role := range roleIDs {
		a := models.NewAppRoleAssignment()
		a.SetPrincipalId(&principal)
		a.SetResourceId(&graphSP)
		a.SetAppRoleId(&role)
		if _, err := sdkCall("app role assignment", func() (models.AppRoleAssignmentable, error) {
			return c.sdk.ServicePrincipals().ByServicePrincipalId(principal.String()).AppRoleAssignments().Post(ctx, a, nil)
		}); err != nil {
			return "", fmt.Errorf("grant %s to %s: %w", role, appID, mapError(err))
		}
	}
	return appID, nil
}

// graphServicePrincipal finds Microsoft Graph's service principal in the
// tenant and the ids of BackupRoles on it.
func (c *Client) graphServicePrincipal(ctx context.Context) (uuid.UUID, []uuid.UUID, error) {
	filter := "appId eq '" + graphAppID + "'"
	resp, err := sdkCall("service principals", func() (models.ServicePrincipalCollectionResponseable, error) {
		return c.sdk.ServicePrincipals().Get(ctx, &serviceprincipals.ServicePrincipalsRequestBuilderGetRequestConfiguration{
			QueryParameters: &serviceprincipals.ServicePrincipalsRequestBuilderGetQueryParameters{Filter: &filter},
		})
	})
	if err != nil {
		return uuid.UUID{}, nil, fmt.Errorf("find Microsoft Graph's service principal: %w", mapError(err))
	}
	if len(resp.GetValue()) != 1 {
		return uuid.UUID{}, nil, fmt.Errorf("find Microsoft Graph's service principal: %d found", len(resp.GetValue()))
	}
	sp := resp.GetValue()[0]
	if sp == nil {
		return uuid.UUID{}, nil, fmt.Errorf("find Microsoft Graph's service principal: %w", errNullEntry)
	}
	id, err := uuid.Parse(deref(sp.GetId()))
	if err != nil {
		return uuid.UUID{}, nil, fmt.Errorf("Microsoft Graph's service principal id %q: %w", deref(sp.GetId()), err)
	}
	var roles []uuid.UUID
	for _, want := range BackupRoles {
		found := false
		for _, r := range sp.GetAppRoles() {
			if deref(r.GetValue()) == want && r.GetId() != nil {
				roles, found = append(roles, *r.GetId()), true
				break
			}
		}
		if !found {
			return uuid.UUID{}, nil, fmt.Errorf("Microsoft Graph offers no application role %s", want)
		}
	}
	return id, roles, nil
}

func ptr[T any](v T) *T { return &v }
