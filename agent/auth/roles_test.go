package auth

import (
	"testing"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionalphapb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"

	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
)

// TestEveryMethodHasARole walks the service descriptors so that an RPC added
// to a service cannot be served without a decision about its role.
func TestEveryMethodHasARole(t *testing.T) {
	descs := []grpc.ServiceDesc{
		pb.AgentService_ServiceDesc, pb.PoolService_ServiceDesc, pb.JobService_ServiceDesc, pb.CatalogService_ServiceDesc,
		healthpb.Health_ServiceDesc, reflectionpb.ServerReflection_ServiceDesc, reflectionalphapb.ServerReflection_ServiceDesc,
	}
	seen := 0
	for _, d := range descs {
		var names []string
		for _, m := range d.Methods {
			names = append(names, m.MethodName)
		}
		for _, s := range d.Streams {
			names = append(names, s.StreamName)
		}
		for _, name := range names {
			method := "/" + d.ServiceName + "/" + name
			if _, ok := Required(method); !ok {
				t.Errorf("%s has no entry in methodRoles", method)
			}
			seen++
		}
	}
	if seen != len(methodRoles) {
		t.Errorf("methodRoles has %d entries, the services %d methods: remove stale entries", len(methodRoles), seen)
	}
}

func TestRolesOfMethods(t *testing.T) {
	tests := []struct {
		method string
		want   Role
	}{
		{pb.JobService_SubmitJob_FullMethodName, Write},
		{pb.JobService_CancelJob_FullMethodName, Write},
		{pb.PoolService_AddApplication_FullMethodName, Write},
		{pb.PoolService_RemoveApplication_FullMethodName, Write},
		{pb.JobService_GetJob_FullMethodName, Read},
		{pb.JobService_WatchJob_FullMethodName, Read},
		{pb.CatalogService_ReadItem_FullMethodName, Read},
		{pb.AgentService_GetAgentInfo_FullMethodName, Read},
		{healthpb.Health_Check_FullMethodName, None},
		{reflectionpb.ServerReflection_ServerReflectionInfo_FullMethodName, Read},
	}
	for _, tt := range tests {
		if got, ok := Required(tt.method); !ok || got != tt.want {
			t.Errorf("Required(%s) = %v, %v; want %v", tt.method, got, ok, tt.want)
		}
	}
	if _, ok := Required("/backupproxy.v1.JobService/DeleteEverything"); ok {
		t.Error("an unknown method has a role")
	}
}

func TestParseRoles(t *testing.T) {
	tests := []struct {
		in      string
		want    Role
		wantErr bool
	}{
		{"read", Read, false},
		{"write", Write, false},
		{"read,write", Read | Write, false},
		{"write, read", Read | Write, false},
		{"", None, true},
		{"admin", None, true},
		{"read,", None, true},
	}
	for _, tt := range tests {
		got, err := ParseRoles(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseRoles(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
	if s := (Read | Write).String(); s != "read,write" {
		t.Errorf("String = %q", s)
	}
}
