// Linearizability checker for DeviceGrid operation histories (porcupine).
// Built by scripts/lincheck-bin.sh. To change version:
// go get github.com/anishathalye/porcupine@vX.Y.Z && go mod tidy
module devicegrid/tools/lincheck

go 1.26.0

require github.com/anishathalye/porcupine v1.3.1
