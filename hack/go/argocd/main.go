// Command argocd is the part of Argo CD's multi-call binary (cmd/main.go upstream) that
// apprelease's GitOps tests and `hack/argocd up` run: application-controller, repo-server and
// the git askpass helper the repo-server execs. Like upstream it dispatches on the name it
// was invoked as; hack/build-argocd symlinks the three names to this one binary.
// Built by hack/build-argocd; the pin is the require line in go.mod.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	appcontroller "github.com/argoproj/argo-cd/v3/cmd/argocd-application-controller/commands"
	gitaskpass "github.com/argoproj/argo-cd/v3/cmd/argocd-git-ask-pass/commands"
	reposerver "github.com/argoproj/argo-cd/v3/cmd/argocd-repo-server/commands"
	"github.com/argoproj/argo-cd/v3/util/log"
)

func init() {
	// As upstream: klog (client-go's logger) goes through Argo CD's configured logrus.
	klog.SetLogger(log.NewLogrusLogger(log.NewWithCurrentConfig()))
}

func main() {
	var command *cobra.Command
	name := filepath.Base(os.Args[0])
	// ARGOCD_BINARY_NAME is upstream's override; the repo-server sets it when it execs
	// itself as the git askpass helper.
	if val := os.Getenv("ARGOCD_BINARY_NAME"); val != "" {
		name = val
	}
	switch name {
	case "argocd-application-controller":
		command = appcontroller.NewCommand()
	case "argocd-repo-server":
		command = reposerver.NewCommand()
	case "argocd-git-ask-pass":
		command = gitaskpass.NewCommand()
		command.SilenceErrors = true
		command.SilenceUsage = true
	default:
		fmt.Fprintf(os.Stderr, "%s: invoke as argocd-application-controller, argocd-repo-server or argocd-git-ask-pass\n", name)
		os.Exit(2)
	}
	if err := command.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
