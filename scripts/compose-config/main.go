// compose-config loads compose files with the compose specification's own loader
// (github.com/compose-spec/compose-go/v2, the library behind `docker compose config`) and prints
// the resolved project as JSON. Usage: compose-config FILE [FILE...] (later files override).
// scripts/setup.sh builds it into .tools/bin; tests/compose use it where no compose plugin exists.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-config FILE [FILE...]")
		os.Exit(2)
	}
	opts, err := cli.NewProjectOptions(os.Args[1:], cli.WithOsEnv, cli.WithDotEnv)
	if err == nil {
		var project any
		project, err = opts.LoadProject(context.Background())
		if err == nil {
			err = json.NewEncoder(os.Stdout).Encode(project)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "compose-config:", err)
		os.Exit(1)
	}
}
