// Package kindconfig checks kind-config.yaml with kind's own configuration types.
//
// Run by `go test ./...` in tests/go (tests/unit/test_go_harnesses.py runs it in `make test`).
// No Docker is needed: the file is decoded strictly (an unknown or misspelt field fails, as
// it would fail `kind create cluster`), defaulted by kind, and then checked for what
// apprelease relies on: one control plane, two workers labelled as hosts, and each worker's
// agent root mounted from a directory of its own.
package kindconfig

import (
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"
)

const (
	hostLabel = "apprelease.dev/host"
	agentRoot = "/var/lib/apprelease"
)

func loadConfig(t *testing.T) v1alpha4.Cluster {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "..", "kind-config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cluster v1alpha4.Cluster
	if err := yaml.UnmarshalStrict(raw, &cluster); err != nil {
		t.Fatalf("kind-config.yaml does not decode strictly as a kind v1alpha4 Cluster: %v", err)
	}
	v1alpha4.SetDefaultsCluster(&cluster)
	return cluster
}

func TestKindAndVersion(t *testing.T) {
	cluster := loadConfig(t)
	if cluster.Kind != "Cluster" || cluster.APIVersion != "kind.x-k8s.io/v1alpha4" {
		t.Fatalf("kind %q apiVersion %q, want Cluster kind.x-k8s.io/v1alpha4", cluster.Kind, cluster.APIVersion)
	}
}

func TestOneControlPlaneTwoHostWorkers(t *testing.T) {
	cluster := loadConfig(t)
	roles := map[v1alpha4.NodeRole]int{}
	for _, node := range cluster.Nodes {
		roles[node.Role]++
		labelled := node.Labels[hostLabel] == "true"
		switch node.Role {
		case v1alpha4.ControlPlaneRole:
			if labelled {
				t.Errorf("the control plane is labelled %s=true: apps would be deployed on it", hostLabel)
			}
		case v1alpha4.WorkerRole:
			if !labelled {
				t.Errorf("a worker lacks the label %s=true (labels %v)", hostLabel, node.Labels)
			}
		}
	}
	if roles[v1alpha4.ControlPlaneRole] != 1 || roles[v1alpha4.WorkerRole] != 2 || len(cluster.Nodes) != 3 {
		t.Fatalf("nodes by role %v, want 1 control-plane and 2 workers", roles)
	}
}

func TestEachWorkerMountsItsOwnAgentRoot(t *testing.T) {
	cluster := loadConfig(t)
	seen := map[string]bool{}
	for i, node := range cluster.Nodes {
		if node.Role != v1alpha4.WorkerRole {
			continue
		}
		var mount *v1alpha4.Mount
		for j := range node.ExtraMounts {
			if node.ExtraMounts[j].ContainerPath == agentRoot {
				mount = &node.ExtraMounts[j]
			}
		}
		if mount == nil {
			t.Errorf("worker %d has no extraMount at %s", i, agentRoot)
			continue
		}
		if !filepath.IsAbs(mount.HostPath) {
			t.Errorf("worker %d mounts %q: the host path must be absolute", i, mount.HostPath)
		}
		if mount.Readonly {
			t.Errorf("worker %d mounts %s read-only: the agent writes its releases there", i, agentRoot)
		}
		if seen[mount.HostPath] {
			t.Errorf("host path %s is shared by two workers: each host owns its release store", mount.HostPath)
		}
		seen[mount.HostPath] = true
	}
}
