/**
 * OHIF's configuration for tests/test_viewer.py: one DICOMweb data source, Huren.
 *
 * The test's static server sends `window.HUREN = {dicomweb: "<DICOMweb root URL>"}`
 * ahead of this file, so the same file serves OHIF against Huren's origin (through the
 * server's /dicom-web proxy) and against Huren straight from another origin (CORS).
 * The bearer token comes in the viewer's URL (`?token=`), which OHIF keeps for the
 * session: every QIDO-RS and WADO-RS request then carries `Authorization: Bearer`.
 */
window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  // The "investigational use" notice would cover the screenshots.
  investigationalUseDialog: { option: 'never' },
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  showErrorDetails: 'always',
  defaultDataSourceName: 'huren',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'huren',
      configuration: {
        friendlyName: 'Huren',
        name: 'huren',
        wadoUriRoot: window.HUREN.dicomweb,
        qidoRoot: window.HUREN.dicomweb,
        wadoRoot: window.HUREN.dicomweb,
        // Huren is a full QIDO-RS and WADO-RS server, not static files.
        qidoSupportsIncludeField: true,
        // Fuzzy: a name matches on any of its groups, and in Hanyu Pinyin too.
        supportsWildcard: true,
        supportsFuzzyMatching: true,
        staticWado: false,
        imageRendering: 'wadors',
        thumbnailRendering: window.HUREN.thumbnailRendering,
        enableStudyLazyLoad: true,
        bulkDataURI: { enabled: true },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
