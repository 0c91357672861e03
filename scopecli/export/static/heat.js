(function () {
  /* Draw each dataset example's heatmap: data-h = "WIDTH LOW HIGH BASE64" (the stored uint8 grid and the
     range it spans, as the artifact holds it), data-s = -1 for bottom examples. The same ramp and
     opacity as scopecli.core.heatmaps.rgba. */
  var R = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]];
  var all = document.querySelectorAll("canvas.heat");
  for (var c = 0; c < all.length; c++) {
    var el = all[c], p = (el.getAttribute("data-h") || "").split(" ");
    var w = +p[0], lo = +p[1], hi = +p[2], s = +(el.getAttribute("data-s") || 1), b = atob(p[3] || "");
    var n = b.length, v = [], top = 0, i, j;
    if (!(w > 0) || n % w) continue;
    for (i = 0; i < n; i++) { var x = Math.max(0, s * (lo + b.charCodeAt(i) * ((hi - lo) / 255))); v.push(x); if (x > top) top = x; }
    el.width = w; el.height = n / w;
    var ctx = el.getContext("2d"), im = ctx.createImageData(w, n / w);
    for (i = 0; i < n; i++) {
      var t = top > 0 ? v[i] / top : 0, q = t * (R.length - 1), k = Math.min(Math.floor(q), R.length - 2), f = q - k;
      for (j = 0; j < 3; j++) im.data[4 * i + j] = Math.round(R[k][j] + f * (R[k + 1][j] - R[k][j]));
      im.data[4 * i + 3] = Math.round(Math.min(Math.max((t - 0.2) / 0.8, 0), 1) * 170);
    }
    ctx.putImageData(im, 0, 0);
  }
})();
