/* loa's console: the small behaviours htmx does not do. No inline script anywhere. */
(function () {
  "use strict";
  // the upload's progress bar: htmx reports the request body's progress
  document.addEventListener("htmx:xhr:progress", function (event) {
    var bar = document.getElementById("upload-progress");
    if (bar && event.detail && event.detail.lengthComputable) {
      bar.value = Math.round(100 * event.detail.loaded / event.detail.total);
    }
  });
  // a print-friendly page opens the print dialogue by a button, never by itself
  document.addEventListener("click", function (event) {
    var target = event.target;
    if (target && target.matches && target.matches("[data-print]")) {
      event.preventDefault();
      window.print();
    }
  });
})();
