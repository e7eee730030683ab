/*
 * OHIF's configuration for the Atrium stack (mounted over the image's own
 * app-config.js by docker-compose.yml).
 *
 * DICOMweb goes to the same origin the viewer is served from: the viewer's nginx
 * (docker/ohif/default.conf.template) forwards /dicom-web/ and /api/ to Orthanc.
 * Same origin means no CORS, and every request carries the user's Keycloak token,
 * so Atrium shows each user the studies of their own organization only.
 *
 * If KEYCLOAK_PUBLIC_URL in .env changes, change `authority` below to match: it
 * must be exactly the issuer Atrium trusts (ATRIUM_OIDC_ISSUER).
 */
window.config = {
  routerBasename: '/',
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'atrium',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'atrium',
      configuration: {
        friendlyName: 'Atrium',
        name: 'atrium',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        wadoUriRoot: window.location.origin + '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        // Saving measurements stores a DICOM SR through STOW-RS; Atrium imports it
        // as annotations of the study.
        supportsStow: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
  oidc: [
    {
      authority: 'http://keycloak.localhost:8080/realms/atrium',
      client_id: 'ohif',
      redirect_uri: '/callback',
      response_type: 'code',
      scope: 'openid profile email',
      post_logout_redirect_uri: '/',
      automaticSilentRenew: true,
      revokeAccessTokenOnSignout: true,
    },
  ],
};
