"""The sandboxed kernel: Jupyter's kernels run whole in a container (provisioner.py), and their kernelspecs
(kernelspec.py: ``sandbox-kernel kernelspec install``)."""
