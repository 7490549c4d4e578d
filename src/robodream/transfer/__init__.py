"""Control-conditioned video transfer of the GigaWorld-0 data engine: AppearanceTransfer (depth +
segmentation + a reference frame -> RGB in that appearance) and ViewTransfer (a view with depth
-> another static-camera pose), with the forward depth-warp baseline. See
:mod:`robodream.transfer.modeling`."""
