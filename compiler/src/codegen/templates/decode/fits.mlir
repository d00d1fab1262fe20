          %rn{{n}} = arith.constant {{n}} : index
          %fits{{n}} = arith.cmpi ule, %rows, %rn{{n}} : index
          scf.if %fits{{n}} {
