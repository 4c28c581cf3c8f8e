export = addon;
/** @type {any} */
declare let addon: any;
