// The pod sandbox ("pause") binary of the local e2e cluster's pause image: built by
// e2e/cluster/tool-bin.sh pause and packed into an image by e2e/cluster/images.sh.
module devicegrid/tools/pause

go 1.24.0
