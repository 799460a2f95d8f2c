// @rudderstack/analytics-js, the build with its plugins inside (nothing loaded from a CDN).
import { RudderAnalytics } from '@rudderstack/analytics-js/bundled'

window.RudderAnalytics = RudderAnalytics
