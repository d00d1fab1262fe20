"builtin.module"() <{sym_name = "jit_layer"}> ({
  "func.func"() <{arg_attrs = [{}, {}, {}, {}], function_type = (tensor<64x64xf32>, tensor<64x4xf32>, tensor<4x64x128xf32>, tensor<4x128x64xf32>) -> tensor<64x64xf32>, res_attrs = [{jax.result_info = "result"}], sym_name = "main", sym_visibility = "public"}> ({
  ^bb0(%arg14: tensor<64x64xf32>, %arg15: tensor<64x4xf32>, %arg16: tensor<4x64x128xf32>, %arg17: tensor<4x128x64xf32>):
    %33 = "stablehlo.dot_general"(%arg14, %arg15) <{dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [0]>, precision_config = [#stablehlo<precision DEFAULT>, #stablehlo<precision DEFAULT>]}> : (tensor<64x64xf32>, tensor<64x4xf32>) -> tensor<64x4xf32>
    %34 = "stablehlo.constant"() <{value = dense<0xFF800000> : tensor<f32>}> : () -> tensor<f32>
    %35 = "stablehlo.reduce"(%33, %34) <{dimensions = array<i64: 1>}> ({
    ^bb0(%arg26: tensor<f32>, %arg27: tensor<f32>):
      %125 = "stablehlo.maximum"(%arg26, %arg27) : (tensor<f32>, tensor<f32>) -> tensor<f32>
      "stablehlo.return"(%125) : (tensor<f32>) -> ()
    }) : (tensor<64x4xf32>, tensor<f32>) -> tensor<64xf32>
    %36 = "stablehlo.constant"() <{value = dense<0xFF800000> : tensor<f32>}> : () -> tensor<f32>
    %37 = "stablehlo.broadcast_in_dim"(%36) <{broadcast_dimensions = array<i64>}> : (tensor<f32>) -> tensor<64xf32>
    %38 = "stablehlo.maximum"(%37, %35) : (tensor<64xf32>, tensor<64xf32>) -> tensor<64xf32>
    %39 = "stablehlo.broadcast_in_dim"(%38) <{broadcast_dimensions = array<i64: 0>}> : (tensor<64xf32>) -> tensor<64x1xf32>
    %40 = "stablehlo.broadcast_in_dim"(%39) <{broadcast_dimensions = array<i64: 0, 1>}> : (tensor<64x1xf32>) -> tensor<64x4xf32>
    %41 = "stablehlo.subtract"(%33, %40) : (tensor<64x4xf32>, tensor<64x4xf32>) -> tensor<64x4xf32>
    %42 = "stablehlo.exponential"(%41) : (tensor<64x4xf32>) -> tensor<64x4xf32>
    %43 = "stablehlo.constant"() <{value = dense<0.000000e+00> : tensor<f32>}> : () -> tensor<f32>
    %44 = "stablehlo.reduce"(%42, %43) <{dimensions = array<i64: 1>}> ({
    ^bb0(%arg24: tensor<f32>, %arg25: tensor<f32>):
      %124 = "stablehlo.add"(%arg24, %arg25) : (tensor<f32>, tensor<f32>) -> tensor<f32>
      "stablehlo.return"(%124) : (tensor<f32>) -> ()
    }) : (tensor<64x4xf32>, tensor<f32>) -> tensor<64xf32>
    %45 = "stablehlo.broadcast_in_dim"(%44) <{broadcast_dimensions = array<i64: 0>}> : (tensor<64xf32>) -> tensor<64x1xf32>
    %46 = "stablehlo.broadcast_in_dim"(%45) <{broadcast_dimensions = array<i64: 0, 1>}> : (tensor<64x1xf32>) -> tensor<64x4xf32>
    %47 = "stablehlo.divide"(%42, %46) : (tensor<64x4xf32>, tensor<64x4xf32>) -> tensor<64x4xf32>
    %48 = "func.call"(%47) <{callee = @argmax}> : (tensor<64x4xf32>) -> tensor<64xi32>
    %49 = "func.call"(%48) <{callee = @_one_hot}> : (tensor<64xi32>) -> tensor<64x4xi32>
    %50 = "stablehlo.constant"() <{value = dense<0> : tensor<i32>}> : () -> tensor<i32>
    %51 = "stablehlo.broadcast_in_dim"(%50) <{broadcast_dimensions = array<i64>}> : (tensor<i32>) -> tensor<64x4xi32>
    %52 = "stablehlo.compare"(%49, %51) <{compare_type = #stablehlo<comparison_type SIGNED>, comparison_direction = #stablehlo<comparison_direction NE>}> : (tensor<64x4xi32>, tensor<64x4xi32>) -> tensor<64x4xi1>
    %53 = "stablehlo.convert"(%52) : (tensor<64x4xi1>) -> tensor<64x4xi1>
    %54 = "stablehlo.constant"() <{value = dense<0xFF800000> : tensor<f32>}> : () -> tensor<f32>
    %55 = "func.call"(%53, %54, %33) <{callee = @_where}> : (tensor<64x4xi1>, tensor<f32>, tensor<64x4xf32>) -> tensor<64x4xf32>
    %56 = "func.call"(%55) <{callee = @argmax}> : (tensor<64x4xf32>) -> tensor<64xi32>
    %57 = "func.call"(%56) <{callee = @_one_hot}> : (tensor<64xi32>) -> tensor<64x4xi32>
    %58 = "func.call"(%49) <{callee = @cumsum}> : (tensor<64x4xi32>) -> tensor<64x4xi32>
    %59 = "stablehlo.constant"() <{value = dense<1> : tensor<i32>}> : () -> tensor<i32>
    %60 = "stablehlo.broadcast_in_dim"(%59) <{broadcast_dimensions = array<i64>}> : (tensor<i32>) -> tensor<64x4xi32>
    %61 = "stablehlo.subtract"(%58, %60) : (tensor<64x4xi32>, tensor<64x4xi32>) -> tensor<64x4xi32>
    %62 = "func.call"(%57) <{callee = @cumsum}> : (tensor<64x4xi32>) -> tensor<64x4xi32>
    %63 = "stablehlo.constant"() <{value = dense<1> : tensor<i32>}> : () -> tensor<i32>
    %64 = "stablehlo.broadcast_in_dim"(%63) <{broadcast_dimensions = array<i64>}> : (tensor<i32>) -> tensor<64x4xi32>
    %65 = "stablehlo.subtract"(%62, %64) : (tensor<64x4xi32>, tensor<64x4xi32>) -> tensor<64x4xi32>
    %66 = "stablehlo.constant"() <{value = dense<0> : tensor<i32>}> : () -> tensor<i32>
    %67 = "stablehlo.reduce"(%49, %66) <{dimensions = array<i64: 0>}> ({
    ^bb0(%arg22: tensor<i32>, %arg23: tensor<i32>):
      %123 = "stablehlo.add"(%arg22, %arg23) : (tensor<i32>, tensor<i32>) -> tensor<i32>
      "stablehlo.return"(%123) : (tensor<i32>) -> ()
    }) : (tensor<64x4xi32>, tensor<i32>) -> tensor<4xi32>
    %68 = "stablehlo.broadcast_in_dim"(%67) <{broadcast_dimensions = array<i64: 1>}> : (tensor<4xi32>) -> tensor<1x4xi32>
    %69 = "stablehlo.broadcast_in_dim"(%68) <{broadcast_dimensions = array<i64: 0, 1>}> : (tensor<1x4xi32>) -> tensor<64x4xi32>
    %70 = "stablehlo.add"(%65, %69) : (tensor<64x4xi32>, tensor<64x4xi32>) -> tensor<64x4xi32>
    %71 = "stablehlo.constant"() <{value = dense<16> : tensor<i32>}> : () -> tensor<i32>
    %72 = "stablehlo.broadcast_in_dim"(%71) <{broadcast_dimensions = array<i64>}> : (tensor<i32>) -> tensor<64x4xi32>
    %73 = "stablehlo.compare"(%61, %72) <{compare_type = #stablehlo<comparison_type SIGNED>, comparison_direction = #stablehlo<comparison_direction LT>}> : (tensor<64x4xi32>, tensor<64x4xi32>) -> tensor<64x4xi1>
    %74 = "stablehlo.convert"(%73) : (tensor<64x4xi1>) -> tensor<64x4xi32>
    %75 = "stablehlo.multiply"(%49, %74) : (tensor<64x4xi32>, tensor<64x4xi32>) -> tensor<64x4xi32>
    %76 = "stablehlo.constant"() <{value = dense<16> : tensor<i32>}> : () -> tensor<i32>
    %77 = "stablehlo.broadcast_in_dim"(%76) <{broadcast_dimensions = array<i64>}> : (tensor<i32>) -> tensor<64x4xi32>
    %78 = "stablehlo.compare"(%70, %77) <{compare_type = #stablehlo<comparison_type SIGNED>, comparison_direction = #stablehlo<comparison_direction LT>}> : (tensor<64x4xi32>, tensor<64x4xi32>) -> tensor<64x4xi1>
    %79 = "stablehlo.convert"(%78) : (tensor<64x4xi1>) -> tensor<64x4xi32>
    %80 = "stablehlo.multiply"(%57, %79) : (tensor<64x4xi32>, tensor<64x4xi32>) -> tensor<64x4xi32>
    %81 = "stablehlo.multiply"(%61, %75) : (tensor<64x4xi32>, tensor<64x4xi32>) -> tensor<64x4xi32>
    %82 = "stablehlo.constant"() <{value = dense<0> : tensor<i32>}> : () -> tensor<i32>
    %83 = "stablehlo.reduce"(%81, %82) <{dimensions = array<i64: 1>}> ({
    ^bb0(%arg20: tensor<i32>, %arg21: tensor<i32>):
      %122 = "stablehlo.add"(%arg20, %arg21) : (tensor<i32>, tensor<i32>) -> tensor<i32>
      "stablehlo.return"(%122) : (tensor<i32>) -> ()
    }) : (tensor<64x4xi32>, tensor<i32>) -> tensor<64xi32>
    %84 = "stablehlo.multiply"(%70, %80) : (tensor<64x4xi32>, tensor<64x4xi32>) -> tensor<64x4xi32>
    %85 = "stablehlo.constant"() <{value = dense<0> : tensor<i32>}> : () -> tensor<i32>
    %86 = "stablehlo.reduce"(%84, %85) <{dimensions = array<i64: 1>}> ({
    ^bb0(%arg18: tensor<i32>, %arg19: tensor<i32>):
      %121 = "stablehlo.add"(%arg18, %arg19) : (tensor<i32>, tensor<i32>) -> tensor<i32>
      "stablehlo.return"(%121) : (tensor<i32>) -> ()
    }) : (tensor<64x4xi32>, tensor<i32>) -> tensor<64xi32>
    %87 = "stablehlo.convert"(%75) : (tensor<64x4xi32>) -> tensor<64x4xf32>
    %88 = "stablehlo.convert"(%80) : (tensor<64x4xi32>) -> tensor<64x4xf32>
    %89 = "stablehlo.dot_general"(%47, %87) <{dot_dimension_numbers = #stablehlo.dot<lhs_batching_dimensions = [0], rhs_batching_dimensions = [0], lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [1]>, precision_config = [#stablehlo<precision DEFAULT>, #stablehlo<precision DEFAULT>]}> : (tensor<64x4xf32>, tensor<64x4xf32>) -> tensor<64xf32>
    %90 = "stablehlo.dot_general"(%47, %88) <{dot_dimension_numbers = #stablehlo.dot<lhs_batching_dimensions = [0], rhs_batching_dimensions = [0], lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [1]>, precision_config = [#stablehlo<precision DEFAULT>, #stablehlo<precision DEFAULT>]}> : (tensor<64x4xf32>, tensor<64x4xf32>) -> tensor<64xf32>
    %91 = "stablehlo.add"(%89, %90) : (tensor<64xf32>, tensor<64xf32>) -> tensor<64xf32>
    %92 = "stablehlo.constant"() <{value = dense<1.1920929E-7> : tensor<f32>}> : () -> tensor<f32>
    %93 = "stablehlo.broadcast_in_dim"(%92) <{broadcast_dimensions = array<i64>}> : (tensor<f32>) -> tensor<64xf32>
    %94 = "stablehlo.maximum"(%91, %93) : (tensor<64xf32>, tensor<64xf32>) -> tensor<64xf32>
    %95 = "stablehlo.divide"(%89, %94) : (tensor<64xf32>, tensor<64xf32>) -> tensor<64xf32>
    %96 = "stablehlo.divide"(%90, %94) : (tensor<64xf32>, tensor<64xf32>) -> tensor<64xf32>
    %97 = "stablehlo.dot_general"(%95, %87) <{dot_dimension_numbers = #stablehlo.dot<lhs_batching_dimensions = [0], rhs_batching_dimensions = [0]>, precision_config = [#stablehlo<precision DEFAULT>, #stablehlo<precision DEFAULT>]}> : (tensor<64xf32>, tensor<64x4xf32>) -> tensor<64x4xf32>
    %98 = "stablehlo.dot_general"(%96, %88) <{dot_dimension_numbers = #stablehlo.dot<lhs_batching_dimensions = [0], rhs_batching_dimensions = [0]>, precision_config = [#stablehlo<precision DEFAULT>, #stablehlo<precision DEFAULT>]}> : (tensor<64xf32>, tensor<64x4xf32>) -> tensor<64x4xf32>
    %99 = "func.call"(%83) <{callee = @_one_hot_1}> : (tensor<64xi32>) -> tensor<64x16xf32>
    %100 = "func.call"(%86) <{callee = @_one_hot_1}> : (tensor<64xi32>) -> tensor<64x16xf32>
    %101 = "stablehlo.dot_general"(%97, %99) <{dot_dimension_numbers = #stablehlo.dot<lhs_batching_dimensions = [0], rhs_batching_dimensions = [0]>, precision_config = [#stablehlo<precision DEFAULT>, #stablehlo<precision DEFAULT>]}> : (tensor<64x4xf32>, tensor<64x16xf32>) -> tensor<64x4x16xf32>
    %102 = "stablehlo.dot_general"(%98, %100) <{dot_dimension_numbers = #stablehlo.dot<lhs_batching_dimensions = [0], rhs_batching_dimensions = [0]>, precision_config = [#stablehlo<precision DEFAULT>, #stablehlo<precision DEFAULT>]}> : (tensor<64x4xf32>, tensor<64x16xf32>) -> tensor<64x4x16xf32>
    %103 = "stablehlo.add"(%101, %102) : (tensor<64x4x16xf32>, tensor<64x4x16xf32>) -> tensor<64x4x16xf32>
    %104 = "stablehlo.constant"() <{value = dense<0.000000e+00> : tensor<f32>}> : () -> tensor<f32>
    %105 = "stablehlo.broadcast_in_dim"(%104) <{broadcast_dimensions = array<i64>}> : (tensor<f32>) -> tensor<64x4x16xf32>
    %106 = "stablehlo.compare"(%103, %105) <{compare_type = #stablehlo<comparison_type FLOAT>, comparison_direction = #stablehlo<comparison_direction NE>}> : (tensor<64x4x16xf32>, tensor<64x4x16xf32>) -> tensor<64x4x16xi1>
    %107 = "stablehlo.convert"(%106) : (tensor<64x4x16xi1>) -> tensor<64x4x16xf32>
    %108 = "sablehlo.dot_general"(%107, %arg14) <{dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [0], rhs_contracting_dimensions = [0]>, precision_config = [#stablehlo<precision DEFAULT>, #stablehlo<precision DEFAULT>]}> : (tensor<64x4x16xf32>, tensor<64x64xf32>) -> tensor<4x16x64xf32>
    %109 = "stablehlo.dot_general"(%108, %arg16) <{dot_dimension_numbers = #stablehlo.dot<lhs_batching_dimensions = [0], rhs_batching_dimensions = [0], lhs_contracting_dimensions = [2], rhs_contracting_dimensions = [1]>, precision_config = [#stablehlo<precision DEFAULT>, #stablehlo<precision DEFAULT>]}> : (tensor<4x16x64xf32>, tensor<4x64x128xf32>) -> tensor<4x16x128xf32>
    %110 = "stablehlo.constant"() <{value = dense<5.000000e-01> : tensor<f32>}> : () -> tensor<f32>
    %111 = "stablehlo.broadcast_in_dim"(%110) <{broadcast_dimensions = array<i64>}> : (tensor<f32>) -> tensor<4x16x128xf32>
    %112 = "stablehlo.multiply"(%111, %109) : (tensor<4x16x128xf32>, tensor<4x16x128xf32>) -> tensor<4x16x128xf32>
    %113 = "stablehlo.negate"(%109) : (tensor<4x16x128xf32>) -> tensor<4x16x128xf32>
    %114 = "stablehlo.constant"() <{value = dense<0.707106769> : tensor<f32>}> : () -> tensor<f32>
    %115 = "stablehlo.broadcast_in_dim"(%114) <{broadcast_dimensions = array<i64>}> : (tensor<f32>) -> tensor<4x16x128xf32>
    %116 = "stablehlo.multiply"(%113, %115) : (tensor<4x16x128xf32>, tensor<4x16x128xf32>) -> tensor<4x16x128xf32>
    %117 = "chlo.erfc"(%116) : (tensor<4x16x128xf32>) -> tensor<4x16x128xf32>
    %118 = "stablehlo.multiply"(%112, %117) : (tensor<4x16x128xf32>, tensor<4x16x128xf32>) -> tensor<4x16x128xf32>
    %119 = "stablehlo.dot_general"(%118, %arg17) <{dot_dimension_numbers = #stablehlo.dot<lhs_batching_dimensions = [0], rhs_batching_dimensions = [0], lhs_contracting_dimensions = [2], rhs_contracting_dimensions = [1]>, precision_config = [#stablehlo<precision DEFAULT>, #stablehlo<precision DEFAULT>]}> : (tensor<4x16x128xf32>, tensor<4x128x64xf32>) -> tensor<4x16x64xf32>
    %120 = "stablehlo.dot_general"(%103, %119) <{dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [2, 1], rhs_contracting_dimensions = [1, 0]>, precision_config = [#stablehlo<precision DEFAULT>, #stablehlo<precision DEFAULT>]}> : (tensor<64x4x16xf32>, tensor<4x16x64xf32>) -> tensor<64x64xf32>
    "func.return"(%120) : (tensor<64x64xf32>) -> ()
  }) : () -> ()
  "func.func"() <{function_type = (tensor<64x4xf32>) -> tensor<64xi32>, sym_name = "argmax", sym_visibility = "private"}> ({
  ^bb0(%arg9: tensor<64x4xf32>):
    %20 = "stablehlo.iota"() <{iota_dimension = 1 : i64}> : () -> tensor<64x4xi32>
    %21 = "stablehlo.constant"() <{value = dense<0xFF800000> : tensor<f32>}> : () -> tensor<f32>
    %22 = "stablehlo.constant"() <{value = dense<0> : tensor<i32>}> : () -> tensor<i32>
    %23:2 = "stablehlo.reduce"(%arg9, %20, %21, %22) <{dimensions = array<i64: 1>}> ({
    ^bb0(%arg10: tensor<f32>, %arg11: tensor<i32>, %arg12: tensor<f32>, %arg13: tensor<i32>):
      %24 = "stablehlo.compare"(%arg10, %arg12) <{compare_type = #stablehlo<comparison_type FLOAT>, comparison_direction = #stablehlo<comparison_direction GT>}> : (tensor<f32>, tensor<f32>) -> tensor<i1>
      %25 = "stablehlo.compare"(%arg10, %arg10) <{compare_type = #stablehlo<comparison_type FLOAT>, comparison_direction = #stablehlo<comparison_direction NE>}> : (tensor<f32>, tensor<f32>) -> tensor<i1>
      %26 = "stablehlo.or"(%24, %25) : (tensor<i1>, tensor<i1>) -> tensor<i1>
      %27 = "stablehlo.compare"(%arg10, %arg12) <{compare_type = #stablehlo<comparison_type FLOAT>, comparison_direction = #stablehlo<comparison_direction EQ>}> : (tensor<f32>, tensor<f32>) -> tensor<i1>
      %28 = "stablehlo.compare"(%arg11, %arg13) <{compare_type = #stablehlo<comparison_type SIGNED>, comparison_direction = #stablehlo<comparison_direction LT>}> : (tensor<i32>, tensor<i32>) -> tensor<i1>
      %29 = "stablehlo.and"(%27, %28) : (tensor<i1>, tensor<i1>) -> tensor<i1>
      %30 = "stablehlo.or"(%26, %29) : (tensor<i1>, tensor<i1>) -> tensor<i1>
      %31 = "stablehlo.select"(%26, %arg10, %arg12) : (tensor<i1>, tensor<f32>, tensor<f32>) -> tensor<f32>
      %32 = "stablehlo.select"(%30, %arg11, %arg13) : (tensor<i1>, tensor<i32>, tensor<i32>) -> tensor<i32>
      "stablehlo.return"(%31, %32) : (tensor<f32>, tensor<i32>) -> ()
    }) : (tensor<64x4xf32>, tensor<64x4xi32>, tensor<f32>, tensor<i32>) -> (tensor<64xf32>, tensor<64xi32>)
    "func.return"(%23#2147483648) : (tensor<64xi32>) -> ()
  }) : () -> ()
  "func.func"() <{arg_attrs = [{}], function_type = (tensor<64xi32>) -> tensor<64x4xi32>, res_attrs = [{}], sym_name = "_one_hot", sym_visibility = "private"}> ({
  ^bb0(%arg8: tensor<64xi32>):
    %14 = "stablehlo.broadcast_in_dim"(%arg8) <{broadcast_dimensions = array<i64: 0>}> : (tensor<64xi32>) -> tensor<64x1xi32>
    %15 = "stablehlo.iota"() <{iota_dimension = 1 : i64}> : () -> tensor<1x4xi32>
    %16 = "stablehlo.broadcast_in_dim"(%14) <{broadcast_dimensions = array<i64: 0, 1>}> : (tensor<64x1xi32>) -> tensor<64x4xi32>
    %17 = "stablehlo.broadcast_in_dim"(%15) <{broadcast_dimensions = array<i64: 0, 1>}> : (tensor<1x4xi32>) -> tensor<64x4xi32>
    %18 = "stablehlo.compare"(%16, %17) <{compare_type = #stablehlo<comparison_type SIGNED>, comparison_direction = #stablehlo<comparison_direction EQ>}> : (tensor<64x4xi32>, tensor<64x4xi32>) -> tensor<64x4xi1>
    %19 = "stablehlo.convert"(%18) : (tensor<64x4xi1>) -> tensor<64x4xi32>
    "func.return"(%19) : (tensor<64x4xi32>) -> ()
  }) : () -> ()
  "func.func"() <{arg_attrs = [{}, {}, {}], function_type = (tensor<64x4xi1>, tensor<f32>, tensor<64x4xf32>) -> tensor<64x4xf32>, res_attrs = [{}], sym_name = "_where", sym_visibility = "private"}> ({
  ^bb0(%arg5: tensor<64x4xi1>, %arg6: tensor<f32>, %arg7: tensor<64x4xf32>):
    %11 = "stablehlo.convert"(%arg6) : (tensor<f32>) -> tensor<f32>
    %12 = "stablehlo.broadcast_in_dim"(%11) <{broadcast_dimensions = array<i64>}> : (tensor<f32>) -> tensor<64x4xf32>
    %13 = "stablehlo.select"(%arg5, %12, %arg7) : (tensor<64x4xi1>, tensor<64x4xf32>, tensor<64x4xf32>) -> tensor<64x4xf32>
    "func.return"(%13) : (tensor<64x4xf32>) -> ()
  }) : () -> ()
  "func.func"() <{arg_attrs = [{}], function_type = (tensor<64x4xi32>) -> tensor<64x4xi32>, res_attrs = [{}], sym_name = "cumsum", sym_visibility = "private"}> ({
  ^bb0(%arg4: tensor<64x4xi32>):
    %10 = "func.call"(%arg4) <{callee = @cumsum_0}> : (tensor<64x4xi32>) -> tensor<64x4xi32>
    "func.return"(%10) : (tensor<64x4xi32>) -> ()
  }) : () -> ()
  "func.func"() <{function_type = (tensor<64x4xi32>) -> tensor<64x4xi32>, sym_name = "cumsum_0", sym_visibility = "private"}> ({
  ^bb0(%arg1: tensor<64x4xi32>):
    %6 = "stablehlo.constant"() <{value = dense<0> : tensor<i32>}> : () -> tensor<i32>
    %7 = "stablehlo.broadcast_in_dim"(%6) <{broadcast_dimensions = array<i64>}> : (tensor<i32>) -> tensor<i32>
    %8 = "stablehlo.reduce_window"(%arg1, %7) <{base_dilations = array<i64: 1, 1>, padding = dense<[[63, 0], [0, 0]]> : tensor<2x2xi64>, window_dilations = array<i64: 1, 1>, window_dimensions = array<i64: 64, 1>, window_strides = array<i64: 1, 1>}> ({
    ^bb0(%arg2: tensor<i32>, %arg3: tensor<i32>):
      %9 = "stablehlo.add"(%arg2, %arg3) : (tensor<i32>, tensor<i32>) -> tensor<i32>
      "stablehlo.return"(%9) : (tensor<i32>) -> ()
    }) : (tensor<64x4xi32>, tensor<i32>) -> tensor<64x4xi32>
    "func.return"(%8) : (tensor<64x4xi32>) -> ()
  }) : () -> ()
  "func.func"() <{arg_attrs = [{}], function_type = (tensor<64xi32>) -> tensor<64x16xf32>, res_attrs = [{}], sym_name = "_one_hot_1", sym_visibility = "private"}> ({
  ^bb0(%arg0: tensor<64xi32>):
    %0 = "stablehlo.broadcast_in_dim"(%arg0) <{broadcast_dimensions = array<i64: 0>}> : (tensor<64xi32>) -> tensor<64x1xi32>
    %1 = "stablehlo.iota"() <{iota_dimension = 1 : i64}> : () -> tensor<1x16xi32>
    %2 = "stablehlo.broadcast_in_dim"(%0) <{broadcast_dimensions = array<i64: 0, 1>}> : (tensor<64x1xi32>) -> tensor<64x16xi32>
    %3 = "stablehlo.broadcast_in_dim"(%1) <{broadcast_dimensions = array<i64: 0, 1>}> : (tensor<1x16xi32>) -> tensor<64x16xi32>
    %4 = "stablehlo.compare"(%2, %3) <{compare_type = #stablehlo<comparison_type SIGNED>, comparison_direction = #stablehlo<comparison_direction EQ>}> : (tensor<64x16xi32>, tensor<64x16xi32>) -> tensor<64x16xi1>
    %5 = "stablehlo.convert"(%4) : (tensor<64x16xi1>) -> tensor<64x16xf32>
    "func.return"(%5) : (tensor<64x16xf32>) -> ()
  }) : () -> ()
}) {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 1 : i32} : () -> ()
